"""Exactly-once processing on Faust's transactions, with the gaps we found closed.

Faust 0.15's `exactly_once` keeps one transactional producer per input partition and commits
the consumed offsets through it, its transactional id fencing the partition's previous owner.
The worker instead commits all its partitions' events in one transaction of its own, as Kafka
Streams' `exactly_once_v2` does (KIP-447): one producer, whose transactional id is the worker's
static group member id (`reach.seam.worker_transactional_id`: a restarted worker fences the
transaction its former self left open), and one commit — so that an event may change the
tables of another partition this worker processes atomically with its own (a pin made in
place, `processors.in_place`), and a commit costs its round trips once, not once per
partition. Fencing then comes from the group: each commit carries the group member it is made
as, and the group coordinator refuses a member the group no longer has (`reach.seam.commit_as`:
TxnOffsetCommit v3, which aiokafka does not send); a worker commits everything before it lets
partitions go (`reach.seam._commit_before_revocation`), and one that takes partitions over
waits until what its predecessor committed is stable and complete (`processors.handover`).
Our kill tests showed more ways Faust's exactly-once loses or duplicates effects, and this
module closes each. What must live inside Faust's classes is a
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
   through the worker's producer, in the transaction that commits the event (`send`).
3. A commit could run while an event was half processed (between two of its sends), putting
   part of its output in a transaction that does not carry its offset. Events are processed
   under a lock that commits take too.
4. Faust commits the offset after the first *consecutive* run of acknowledged offsets. Our
   input topic is written transactionally, so its offsets have holes (commit markers); a
   commit could then carry outputs of events past a hole without their offsets. We commit
   the offset after the last event we processed in each partition: inside the lock, every
   output in the open transaction belongs to an event below its partition's offset. Faust
   also drops the offsets of partitions no longer assigned from a commit; the one transaction
   carries their events' outputs all the same, so ours commits them (before the revocation).
5. A producer stopped or replaced (the worker lost every partition; fenced) takes its open
   transaction with it while events processed through it wait for a commit. An offset is
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
8. Faust starts and stops a producer per partition at each rebalance (and did not always stop
   those of partitions taken away, which a returning partition then reused, fenced). Ours
   keeps the worker's one producer while it has partitions, and stops any other
   (`reach.seam._on_rebalance_with_one_producer`).

Processing does not wait for a commit: a commit takes its offsets between two events (point
3), then events go on while it makes its round trips to the broker; what they send meanwhile
waits for the next transaction (`OpenTransactions.hold`, `.release`). And an event's outputs
are not sent one by one: they wait with its transaction, per topic partition, and go out as
whole record batches (`processors.outputs`: `create_batch`, `send_batch`) when the
transaction commits, or earlier once `FLUSH_BYTES` have gathered — one client call per
partition instead of one per message, which cost the worker more than applying a record.
Nothing is visible before the commit anyway. A worker with few events commits as soon as its
stream runs dry rather than at the next interval (`processors.commit_pacing`).

9. Tables are RocksDB stores restored from their changelogs, and Faust remembers how far a
   store reflects its changelog only when it restores one, so every start replayed everything
   written since the last restore; and since writes went to RocksDB before their transaction
   committed, a crash left changes of aborted transactions behind and the stores were thrown
   away and rebuilt from the beginning. An event's table changes now wait in memory with its
   transaction (`processors.open_transactions`; `processors.table_overlay` reads them first)
   and reach RocksDB when, and only when, that transaction has committed: in one write batch
   together with the changelog offset of the transaction's last record, as Kafka's KIP-892
   does for Kafka Streams. A store on disk is therefore always the committed changelog up to
   its recorded offset; a start, after a clean stop or a SIGKILL alike, replays only what came
   after it. Changes of an aborted transaction die with its producer. Memory: one commit
   interval of changes per partition.
10. A failed commit aborts its transaction, but the producer lives on, and Faust commits again
   as the crashed worker stops (and at its next interval): offsets of events whose outputs died
   with the aborted transaction would commit without them. Our cluster fault test lost a
   record's outcome so — its transaction coordinator killed mid-commit, the worker's send timed
   out, and the stop's commit reached the coordinator's successor with offsets past the record.
   Once a commit or an event fails (`fail`), this run of the worker commits nothing more
   (`reach.seam._commit_tps_between_events`); it stops, and the next run fences what it left
   open and resumes from the committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.types import TP, EventT

from processors import metrics, restore
from processors.handover import Handover
from processors.in_place import InPlace
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
                 inputs: Iterable[str], requests: str = "") -> None:
        self.app = app
        self.bootstrap_servers = bootstrap_servers
        self.inputs = frozenset(inputs)  # the topics the agent consumes
        self.expected: dict[TP, int] = {}  # next offset to process, per input partition
        self.epoch = 0  # counts rebalances: resume points found in an earlier one are stale
        self._resumable: set[TP] = set()  # partitions whose resume point this epoch is known
        self._early: set[TP] = set()  # partitions with a record delivered before that (logged once)
        self.read_back = ReadBack(bootstrap_servers)  # records the stream skipped, from Kafka
        self.restorer = restore.Restorer(bootstrap_servers)  # table partitions in bulk at a rebalance
        # Partitions taken over: what they wait for.
        self.handover = Handover(bootstrap_servers, app.conf.id, seam.worker_transactional_id(app))
        self.in_place = InPlace(requests, self.expected)  # where pins are made in place (`requests`: its topic)
        self.standbys_restored = False  # this rebalance's restore brought every standby to its end
        # The assignment it last asked a rebalance for (`reach.seam._ask_for_my_share_once_warm`).
        self.asked_holding: tuple[frozenset[int], frozenset[int]] | None = None
        self.lock = asyncio.Lock()  # held by each event, and by a commit while it takes its offsets
        self.failed: BaseException | None = None  # a commit or an event failed: nothing more commits (point 10)
        self.commit_lock = asyncio.Lock()  # one commit at a time
        # Per input partition: the offset after the last event whose outputs are all sent,
        # and the transactional producer that carried them.
        self.processed: dict[TP, tuple[int, Any]] = {}
        # Per input partition: the offset this worker last committed (Faust forgets a partition's
        # at its revocation, before the commit that comes with it: `reach.seam._commit_before_revocation`).
        self._committed: dict[TP, int] = {}
        self._before_commit: list[Callable[[], Awaitable[None]]] = []
        # Each input partition's open and committing transaction; what events read and write of
        # the tables through them, and what they send.
        self.transactions = OpenTransactions(app)
        self.outputs = Outputs(self.transactions, partitions, self.in_place)
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
        await self.handover.close()

    async def take_over(self, inputs: set[TP], active: set[int]) -> None:
        """Wait, before they are restored, until what the previous owner of input partitions
        `inputs` committed is stable and complete (`processors.handover`); then note, for every
        partition this worker now processes (`active`), up to where it processes its requests
        before it pins there in place (`processors.in_place`)."""
        if inputs:
            changelogs = [TopicPartition(table.changelog_topic.get_topic_name(), tp.partition)
                          for table in self.app.tables.values() for tp in inputs]
            await self.handover.take_over([TopicPartition(tp.topic, tp.partition) for tp in inputs], changelogs)
        if self.in_place.requests:
            ends = await self.handover.ends(TopicPartition(self.in_place.requests, p) for p in active)
            self.in_place.took_over({tp.partition: end for tp, end in ends.items()})

    def hold(self) -> None:
        """A commit takes what the open transaction holds (`OpenTransactions.hold`)."""
        self.transactions.hold()
        self.in_place.committing, self.in_place.sending = self.in_place.sending, set()

    def release(self) -> None:
        """The commit is over (`OpenTransactions.release`): the pins and unpins it carried are
        where `in_place` can see them processed."""
        ends: dict[int, int] = {}
        for writes in self.transactions.committing.values():
            for partition, (delivered, count) in writes.ordered_sent.items():
                ends[partition] = max(ends.get(partition, 0), delivered.result().offset + count)
        self.in_place.sent(ends)
        self.in_place.committing = set()
        self.transactions.release()

    def forget(self, tps: Iterable[TP]) -> None:
        """A rebalance began: no event of `tps` is processed until `resume_from` says where."""
        tps = list(tps)
        self.in_place.forget({tp.partition for tp in tps})
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
        """The offsets to commit now; forgets those whose producer is gone (never committed).

        Raises if events of a partition no longer assigned are in the open transaction: it
        cannot commit without their offsets (the partition's new owner would process them
        again), nor with them (that owner may have committed further). The revocation commits
        first (`reach.seam._commit_before_revocation`), so this is not expected."""
        offsets = {}
        producer = self.transactions.producer()
        for tp, (offset, carrier) in list(self.processed.items()):
            if carrier is None or carrier is not producer:
                del self.processed[tp]  # its outputs died with that producer's transaction
            elif offset > max(committed.get(tp) or 0, self._committed.get(tp, 0)):
                if tp not in assigned:
                    raise RuntimeError(f"events of {tp}, no longer assigned to this worker, are in its open "
                                       "transaction: it is aborted")
                offsets[tp] = offset
        return offsets

    async def ensure_transaction(self) -> None:
        """Begin a transaction on the worker's producer if none is open (a commit before a
        revocation, or at a stop, ends one without beginning the next)."""
        producer = self.transactions.producer()
        if producer is not None:
            await begin_unless_open(producer)

    def fail(self, reason: BaseException) -> None:
        """A commit or an event failed: what the open and committing transactions carry is lost
        with them, so this run commits nothing more (point 10); the worker stops."""
        if self.failed is None:
            self.failed = reason
            log.critical("nothing more is committed until the worker starts again: %r", reason)

    def committed(self, seconds: float, offsets: Mapping[TP, int]) -> None:
        """A commit of `offsets` took `seconds`."""
        self._committed.update(offsets)
        metrics.COMMIT_DURATION.observe(seconds)
        metrics.COMMITS.inc(len(offsets))

    def before_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call `hook()` inside each commit, before the transaction takes what it carries."""
        self._before_commit.append(hook)

    async def prepare_commit(self) -> None:
        """Ready the transaction to commit: open, with what waits for it (`before_commit`) in it."""
        await self.ensure_transaction()
        for hook in self._before_commit:
            await hook()
