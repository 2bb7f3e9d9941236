"""Exactly-once processing on Faust's transactions, with the gaps we found closed.

Faust 0.15's `exactly_once` keeps one transactional producer per input partition and commits
the consumed offsets through it. Our kill tests showed three ways it loses or duplicates
effects, and this module closes each. What must live inside Faust's classes is a
replacement of one of their methods in `reach.seam` (the one module that names private parts
of Faust, mode and aiokafka), put in place by its `install_faust()` — the worker's
`create_app` calls it — which refuses library versions they were not checked against;
tests/test_faust_seam.py checks each replaced or read private name against the installed
classes. The replacements named below are there:

1. Table changelog writes wait in Faust's send buffer, which is not drained before a
   transactional commit (its `flush()` gives up after 100 ms), so they could land in the
   *next* transaction — lost if the worker died in between, while the offset was already
   committed. Our table writes send their changelog record themselves (`put`).
2. `Topic.send` picks the transaction of the *destination* partition (or none at all for a
   topic the worker doesn't consume), not of the event being processed. We send our outputs
   through the producer of the event's own partition (`send`), to any partition.
3. A commit could run while an event was half processed (between two of its sends), putting
   part of its output in a transaction that does not carry its offset. Events are processed
   under a lock that commits take too.
4. Faust commits the offset after the first *consecutive* run of acknowledged offsets. Our
   input topic is written transactionally, so its offsets have holes (commit markers); a
   commit could then carry outputs of events past a hole without their offsets. We commit
   the offset after the last event we processed in each partition: inside the lock, every
   output in a partition's open transaction belongs to an event below that offset.
5. A rebalance can replace a partition's transactional producer (its open transaction is
   then aborted) while events processed through the old one wait for a commit. An offset is
   committed only through the very producer that carried its event's outputs.
6. Faust's recovery can resume a stream before it seeks back to the committed offsets, and
   then deliver a partition's records with a hole (faust-streaming#216, #596). Events are
   processed strictly in offset order (`in_order`): records the stream jumped over are read
   back from Kafka and processed first; a jump over transaction markers reads nothing, and a
   jump over offsets that the consumer itself passed over (markers, aborted batches) is not
   read back at all (`seam.passed_over`).
   Where a partition resumes is never guessed from the first record delivered: after a
   rebalance, records fetched while the stream was suspended are dropped with the fetch
   position past them, and Faust's seek leaves a partition without a committed offset there
   (our two-worker dependency test lost two committed dependency requests that way). Our
   seek (`_perform_seek_knowing_where_each_partition_resumes`) finds each partition's resume
   point (its committed offset, or the start of its log) and tells `in_order`; records
   delivered before are not processed. Once the recovery has resumed the streams — which
   clears their queues, silently dropping records already fetched, that Faust then never
   delivers again — every partition is sought back to the next offset `in_order` expects
   (`_seek_to_resume_points`). Our restart tests lost their only queued batch without it.
7. Under `exactly_once`, Faust takes a changelog's end for recovery from the last fetch
   response, which is unknown (-1) before the first fetch: a worker taking a partition back
   would skip recovering it, or crash on its consistency check. We ask the broker, and read
   back from its end to the last committed record (`_after_last_records`): Faust's recovery
   otherwise waits for two idle 5-second polls to pass the transaction markers at the end.
8. Faust does not always stop the producers of partitions a rebalance took away (seen in
   our two-worker kill test): the new owner fences them, and when the partition came back
   the fenced producer was reused and failed. On every rebalance we stop each producer whose
   partition is no longer ours, so a returning partition gets a fresh one.

For speed, the partitions' transactions commit concurrently rather than one after another
(`_commit_transactions_concurrently`), and processing does not wait for a commit: a commit
takes its offsets between two events (point 3), then events go on while it makes its round
trips to the broker; what they send meanwhile waits for that producer's next transaction
(`OpenTransactions.hold`, `.release`). And an event's outputs are not sent one by one: they
wait with its transaction, per topic partition, and go out as whole record batches
(`processors.outputs`: `create_batch`, `send_batch`) when the transaction commits, or earlier
once `FLUSH_BYTES` have gathered — one client call per partition instead of one per message,
which cost the worker more than applying a record. Nothing is visible before the commit
anyway. A worker with few events commits as soon as its stream runs dry rather than at the
next interval (`processors.commit_pacing`).

9. Tables are RocksDB stores restored from their changelogs, and Faust remembers how far a
   store reflects its changelog only when it restores one, so every start replayed everything
   written since the last restore; and since writes went to RocksDB before their transaction
   committed, a crash left changes of aborted transactions behind and the stores were thrown
   away and rebuilt from the beginning. An event's table changes now wait in memory with its
   transaction (`processors.open_transactions`; `processors.table_overlay` reads them first)
   and reach RocksDB when, and only when, that transaction has committed: in one write batch
   together with the changelog offset of the transaction's last record, as Kafka's KIP-892
   does for Kafka Streams. A store on disk
   is therefore always the committed changelog up to its recorded offset; a start, after a
   clean stop or a SIGKILL alike, replays only what came after it. Changes of an aborted
   transaction die with its producer. Memory: one commit interval of changes per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from faust.types import TP, EventT

from processors import metrics, restore
from processors.open_transactions import OpenTransactions, begin_unless_open
from processors.outputs import Outputs
from processors.read_back import ReadBack
from processors.table_overlay import TableOverlay
from reach import seam

log = logging.getLogger(__name__)


class ExactlyOnce:
    """Per-event atomicity for one Faust app running with `processing_guarantee="exactly_once"`:
    where each input partition resumes and which offsets a commit may carry; its `transactions`,
    `tables` and `outputs` hold, read and send what events did in the open transactions."""

    def __init__(self, app: faust.App, partitions: dict[str, int], bootstrap_servers: str,
                 inputs: Iterable[str]) -> None:
        self.app = app
        self.bootstrap_servers = bootstrap_servers
        self.inputs = frozenset(inputs)  # the topics the agent consumes
        self.expected: dict[TP, int] = {}  # next offset to process, per input partition
        self.epoch = 0  # counts rebalances: resume points found in an earlier one are stale
        self._resumable: set[TP] = set()  # partitions whose resume point this epoch is known
        self._early: set[TP] = set()  # partitions with a record delivered before that (logged once)
        self.read_back = ReadBack(bootstrap_servers)  # records the stream skipped, from Kafka
        self.restorer = restore.Restorer(bootstrap_servers)  # table partitions in bulk at a rebalance
        self.standbys_restored = False  # this rebalance's restore brought every standby to its end
        # The assignment it last asked a rebalance for (`reach.seam._ask_for_my_share_once_warm`).
        self.asked_holding: tuple[frozenset[int], frozenset[int]] | None = None
        self.lock = asyncio.Lock()  # held by each event, and by a commit while it takes its offsets
        self.commit_lock = asyncio.Lock()  # one commit at a time
        # Per input partition: the offset after the last event whose outputs are all sent,
        # and the transactional producer that carried them.
        self.processed: dict[TP, tuple[int, Any]] = {}
        self._before_commit: list[Callable[[TP], Awaitable[None]]] = []
        # Each input partition's open and committing transaction; what events read and write of
        # the tables through them, and what they send.
        self.transactions = OpenTransactions(app)
        self.outputs = Outputs(self.transactions, partitions)
        self.tables = TableOverlay(self.transactions, self.outputs)
        seam.attach(app, self)

    @contextlib.asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """No commit running and no event half processed, for as long as this is held."""
        async with self.commit_lock, self.lock:  # in this order, as a commit takes them
            yield

    async def in_order(self, event: EventT) -> list[Any]:
        """What to process now, in offset order: records the stream skipped, then `event`.

        Empty when `event` was processed before. A skipped record is read back from Kafka and
        handed over like an event (`key`, `value`, `message.topic/partition/offset/tp/headers`).
        """
        tp, offset = event.message.tp, event.message.offset
        if tp not in self._resumable:  # delivered before the seek; it delivers this again
            if tp not in self._early:
                self._early.add(tp)
                log.info("%s@%d delivered before the partition's resume point was known; "
                         "the seek delivers it again", tp, offset)
            return []
        expected = self.expected[tp]
        if offset < expected:
            return []
        skipped = []
        if offset > expected and not seam.passed_over(tp.topic, tp.partition, expected, offset):
            skipped = await self.read_back.records_between(tp, expected, offset)
        if skipped:
            log.warning("%d records of %s before offset %s were skipped by the stream; processing them first",
                        len(skipped), tp, offset)
        return [*skipped, event]

    async def close(self) -> None:
        await self.read_back.close()
        await self.restorer.close()

    def forget(self, tps: Iterable[TP]) -> None:
        """A rebalance began: no event of `tps` is processed until `resume_from` says where."""
        self.epoch += 1
        for tp in tps:
            self.expected.pop(tp, None)
            self._resumable.discard(tp)
            self._early.discard(tp)
            self.read_back.forget(tp)

    def resume_from(self, epoch: int, points: Mapping[TP, int]) -> None:
        """Each partition's first offset to process after the rebalance `epoch` (from the seek):
        its committed offset, or the start of its log, or past the events processed into its
        producer's still open transaction (those commit with it).

        Ignored if another rebalance began meanwhile.
        """
        if epoch != self.epoch:
            log.info("resume points of an earlier rebalance ignored")
            return
        for tp, point in points.items():
            done = self.processed.get(tp)
            carrier = self.transactions.producer_of(tp)
            if done is not None and done[1] is not None and done[1] is carrier and done[0] > point:
                point = done[0]
            self.expected[tp] = point
            self._resumable.add(tp)
        # One line per rebalance: where each partition resumed, for anyone reading a stall.
        log.info("resuming at %s", ", ".join(f"{tp.topic}[{tp.partition}]@{self.expected[tp]}"
                                           for tp in sorted(points)))

    def resume_points(self) -> dict[TP, int]:
        """The next offset to process of each partition whose resume point is known."""
        return {tp: self.expected[tp] for tp in self._resumable}

    def next_offset(self, tp: TP) -> int | None:
        """The next offset of input partition `tp` to process: after the last one processed, else
        its committed offset (None: nothing known yet)."""
        if tp in self.expected:
            return self.expected[tp]
        return seam.committed_offset(self.app, tp)

    def done(self, event: EventT) -> None:
        """Mark `event` processed: its offset goes into the next commit of its partition."""
        tp = event.message.tp
        self.expected[tp] = event.message.offset + 1
        self.processed[tp] = (event.message.offset + 1, self.transactions.producer_of(tp))

    def committable(self, assigned: set[TP], committed: Mapping[TP, int | None]) -> dict[TP, int]:
        """The offsets to commit now; forgets those whose producer is gone (never committed)."""
        offsets = {}
        for tp, (offset, producer) in list(self.processed.items()):
            if tp not in assigned or producer is None or producer is not self.transactions.producer_of(tp):
                del self.processed[tp]  # its outputs died with that producer's transaction
            elif offset > (committed.get(tp) or 0):
                offsets[tp] = offset
        return offsets

    async def ensure_transaction(self, tp: TP) -> None:
        """Begin a transaction on `tp`'s producer if none is open.

        Faust's commit on a rebalance may end a partition's transaction without starting the
        next one while the partition stays with this worker.
        """
        producer = self.transactions.producer_of(tp)
        if producer is not None:
            await begin_unless_open(producer)

    def committed(self, seconds: float, partitions: int) -> None:
        """A commit of `partitions` transactions took `seconds` (for the metrics)."""
        metrics.COMMIT_DURATION.observe(seconds)
        metrics.COMMITS.inc(partitions)

    def before_commit(self, hook: Callable[[TP], Awaitable[None]]) -> None:
        """Call `hook(tp)` inside the commit, before `tp`'s transaction commits its offset."""
        self._before_commit.append(hook)

    async def prepare_commit(self, tp: TP) -> None:
        """Ready `tp`'s transaction to commit: open, with what waits for it (`before_commit`) sent."""
        await self.ensure_transaction(tp)
        for hook in self._before_commit:
            await hook(tp)
