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
   back from Kafka and processed first; a jump over transaction markers reads nothing.
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
(`hold_sends`, `release_sends`). And an event's outputs are not sent one by one: they wait with
its transaction, per topic partition, and go out as whole record batches (`create_batch`,
`send_batch`) when the transaction commits, or earlier once `FLUSH_BYTES` have gathered —
one client call per partition instead of one per message, which cost the worker more than
applying a record. Nothing is visible before the commit anyway. A worker with few events
commits as soon as its stream runs dry rather than at the next interval (`processors.commit_pacing`).

9. Tables are RocksDB stores restored from their changelogs, and Faust remembers how far a
   store reflects its changelog only when it restores one, so every start replayed everything
   written since the last restore; and since writes went to RocksDB before their transaction
   committed, a crash left changes of aborted transactions behind and the stores were thrown
   away and rebuilt from the beginning. An event's table changes now wait in memory with its
   transaction (`_Transaction`; reads see them first) and reach RocksDB when, and only when,
   that transaction has committed: in one write batch together with the changelog offset of
   the transaction's last record, as Kafka's KIP-892 does for Kafka Streams. A store on disk
   is therefore always the committed changelog up to its recorded offset; a start, after a
   clean stop or a SIGKILL alike, replays only what came after it. Changes of an aborted
   transaction die with its producer. Memory: one commit interval of changes per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP, EventT, TableT
from rocksdict import WriteBatch

from processors import metrics, restore
from processors.grouped import Group, encode_item
from processors.read_back import ReadBack
from reach import seam
from state.store import prefix_items
from topics import partitioning
from topics.record_batches import send_batches

log = logging.getLogger(__name__)
_ABSENT = object()
_NO_CHANGES: dict[bytes, bytes | None] = {}
# A transaction's outputs gathered beyond this are sent at once, before its commit.
FLUSH_BYTES = 1024 * 1024
_Output = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]] | Group  # key, value, headers; or a group


class ExactlyOnce:
    """Per-event atomicity for one Faust app running with `processing_guarantee="exactly_once"`."""

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
        self.partitions = partitions
        self.lock = asyncio.Lock()  # held by each event, and by a commit while it takes its offsets
        self.commit_lock = asyncio.Lock()  # one commit at a time
        # Transactional ids whose transaction is committing: their new outputs wait for the next one.
        self._held: set[str] = set()
        # Per input partition: the offset after the last event whose outputs are all sent,
        # and the transactional producer that carried them.
        self.processed: dict[TP, tuple[int, Any]] = {}
        self._before_commit: list[Callable[[TP], Awaitable[None]]] = []
        self._tids: dict[TP, str] = {}
        # Per transactional id: its open transaction's changes and outputs, and the committing one's.
        self._open: dict[str, _Transaction] = {}
        self._committing: dict[str, _Transaction] = {}
        self._tables: dict[str, TableT] = {}
        self._changelog_of: dict[str, str] = {}  # table name -> its changelog topic
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
        skipped = await self.read_back.records_between(tp, expected, offset) if offset > expected else []
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
            if done is not None and done[1] is not None and done[1] is self.producer_of(tp) and done[0] > point:
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
        self.processed[tp] = (event.message.offset + 1, self.producer_of(tp))

    def committable(self, assigned: set[TP], committed: Mapping[TP, int | None]) -> dict[TP, int]:
        """The offsets to commit now; forgets those whose producer is gone (never committed)."""
        offsets = {}
        for tp, (offset, producer) in list(self.processed.items()):
            if tp not in assigned or producer is None or producer is not self.producer_of(tp):
                del self.processed[tp]  # its outputs died with that producer's transaction
            elif offset > (committed.get(tp) or 0):
                offsets[tp] = offset
        return offsets

    async def ensure_transaction(self, tp: TP) -> None:
        """Begin a transaction on `tp`'s producer if none is open.

        Faust's commit on a rebalance may end a partition's transaction without starting the
        next one while the partition stays with this worker.
        """
        producer = self.producer_of(tp)
        if producer is not None:
            await _begin_unless_open(producer)

    def producer_of(self, tp: TP) -> Any:
        """The transactional producer of input partition `tp` now (its identity ends with it)."""
        return seam.transaction_producers(self.app).get(self._tid(tp))

    def _tid(self, tp: TP) -> str:
        tid = self._tids.get(tp)
        if tid is None:  # fixed for the app's life: agents and their topics don't change
            tid = self._tids[tp] = seam.transactional_id(self.app, tp)
        return tid

    # Tables: RocksDB stores with bytes keys and JSON values. A table's partition p holds what
    # events of input partition p wrote (Faust's rule), so an event reads and writes the store
    # of its own partition, directly: Faust's mapping interface looks a key up two or three
    # times and encodes through its serializer registry, per call. Changes wait with their
    # transaction and reach RocksDB once it has committed (point 9).

    def get(self, event: EventT, table: TableT, key: bytes) -> Any:
        """`table[key]` in `event`'s partition, or None, including changes not yet committed."""
        tid = self._tid(event.message.tp)
        for writes in (self._open_writes(event.message.tp), self._committing.get(tid)):
            if writes is not None:
                raw = writes.changes.get(table.name, _NO_CHANGES).get(key, _ABSENT)
                if raw is not _ABSENT:
                    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]
        raw = seam.table_store(table, event.message.partition).get(key)
        return None if raw is None else orjson.loads(raw)

    def keys_with_prefix(self, event: EventT, table: TableT, prefix: bytes, skip: bytes | None = None,
                         limit: int = 1000) -> list[bytes]:
        """Up to `limit` keys of `table` in `event`'s partition that start with `prefix`, other
        than `skip`, changes not yet committed included (those first, then in key order): a
        seek in RocksDB, and a look at one commit interval of changes."""
        tid = self._tid(event.message.tp)
        overlay: dict[bytes, bytes | None] = {}
        for writes in (self._committing.get(tid), self._open_writes(event.message.tp)):  # newest last
            if writes is not None:
                changes = writes.changes.get(table.name, _NO_CHANGES)
                if prefix.find(b"\x00") == len(prefix) - 1:  # a key's part up to its NUL: indexed
                    overlay.update((k, changes[k]) for k in writes.by_prefix.get(table.name, {}).get(prefix, ()))
                else:
                    overlay.update((k, raw) for k, raw in changes.items() if k.startswith(prefix))
        found = [k for k, raw in overlay.items() if raw is not None and k != skip][:limit]
        for key, _ in prefix_items(seam.table_store(table, event.message.partition), prefix):
            if len(found) >= limit:
                break
            if key not in overlay and key != skip:  # changes still uncommitted were counted above
                found.append(key)
        return found

    async def put(self, event: EventT, table: TableT, key: bytes, value: Any) -> None:
        """`table[key] = value`, its changelog record sent in `event`'s transaction."""
        await self._change(event, table, key, orjson.dumps(value))

    async def delete(self, event: EventT, table: TableT, key: bytes) -> None:
        """`del table[key]`, its changelog tombstone sent in `event`'s transaction."""
        await self._change(event, table, key, None)

    def _open_writes(self, tp: TP) -> _Transaction | None:
        """`tp`'s open transaction; dropped if it died with its producer."""
        tid = self._tid(tp)
        writes = self._open.get(tid)
        if writes is not None and writes.producer is not self.producer_of(tp):
            del self._open[tid]  # aborted: the events that made it are processed again
            return None
        return writes

    def _open_transaction(self, tp: TP) -> _Transaction:
        writes = self._open_writes(tp)
        if writes is None:
            writes = self._open[self._tid(tp)] = _Transaction(self.producer_of(tp), tp.partition)
        return writes

    async def _change(self, event: EventT, table: TableT, key: bytes, raw: bytes | None) -> None:
        tp = event.message.tp
        writes = self._open_transaction(tp)
        changes = writes.changes.get(table.name)
        if changes is None:
            changes = writes.changes[table.name] = {}
        changes[key] = raw
        nul = key.find(b"\x00")
        if nul >= 0:  # for `keys_with_prefix`: a scan of every change per look was quadratic
            writes.by_prefix.setdefault(table.name, {}).setdefault(key[:nul + 1], {})[key] = None
        changelog = self._changelog_of.get(table.name)
        if changelog is None:  # Faust's topic name costs a property chain per call
            changelog = self._changelog_of[table.name] = table.changelog_topic.get_topic_name()
            self._tables[table.name] = table
        # Only a key's last change in a transaction goes to the changelog: the transaction
        # commits whole, and a restore or a reader keeps only the last value of a key anyway.
        # A record waiting for three references rewrote its pending entry at each answer.
        writes.changelogs.setdefault((changelog, tp.partition), {})[key] = raw
        await self._grown(tp, writes, len(raw or b"") + len(key))

    def partition_items(self, table: TableT, partition: int) -> list[tuple[bytes, Any]]:
        """Every (key, value) this worker holds for one partition of `table`, uncommitted changes included."""
        db = seam.table_store(table, partition)
        found: dict[bytes, bytes | None] = {k: v for k, v in db.items() if not k.startswith(b"__faust")}
        producers = seam.transaction_producers(self.app)
        live = [w for tid, w in self._open.items() if w.producer is producers.get(tid)]  # not aborted
        for writes in (*self._committing.values(), *live):  # newest last
            if writes.partition == partition:
                found.update(writes.changes.get(table.name, _NO_CHANGES))
        return [(k, orjson.loads(raw)) for k, raw in found.items() if raw is not None]

    def store_committed(self, tid: str, producer: Any) -> None:
        """`tid`'s transaction has committed: write its table changes to RocksDB, each store's in
        one write batch with the changelog offset of its last record (where a restore resumes)."""
        writes = self._committing.pop(tid, None)
        if writes is None or writes.producer is not producer:
            return
        for name, changes in writes.changes.items():
            batch = WriteBatch(raw_mode=True)
            for key, raw in changes.items():
                if raw is None:
                    batch.delete(key)
                else:
                    batch.put(key, raw)
            table = self._tables[name]
            last = writes.last_sent.get(table.changelog_topic.get_topic_name())
            sent, index = last if last is not None else (None, 0)
            if sent is not None and sent.done() and not sent.cancelled() and sent.exception() is None:
                # The offset after the last record is the transaction's commit marker: only this
                # producer writes the partition, and its next transaction began after the commit.
                # A restore starts there, and one with nothing after it has nothing to do.
                batch.put(seam.PERSISTED_OFFSET_KEY, str(sent.result().offset + index + 1).encode())
            # With RocksDB's write-ahead log: a SIGKILL right after loses nothing written here.
            seam.table_store(table, writes.partition).write(batch)

    def committed(self, seconds: float, partitions: int) -> None:
        """A commit of `partitions` transactions took `seconds` (for the metrics)."""
        metrics.COMMIT_DURATION.observe(seconds)
        metrics.COMMITS.inc(partitions)

    def forget_committing(self, tid: str) -> None:
        """`tid`'s transaction was aborted by its partition's new owner: its changes are not kept."""
        self._committing.pop(tid, None)

    def drop_committing(self) -> None:
        """A commit failed: what it carried is not committed (the worker stops)."""
        self._committing.clear()

    def reopen_uncommitted(self) -> None:
        """After a commit: the changes of a transaction it did not end (Faust skips partitions it
        no longer counts as assigned) stay with that transaction, ahead of the newer ones."""
        for tid, writes in self._committing.items():
            later = self._open.get(tid)
            if later is not None and later.producer is not writes.producer:
                continue  # `writes` died with their producer; `later` belong to its successor
            if later is not None:
                writes.absorb(later)
            self._open[tid] = writes
        self._committing.clear()

    async def send(self, event: EventT, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send in the transaction that commits `event`'s offset.

        Without `partition`, the key picks it as every Kafka client does (murmur2), so that
        all messages of one key share a partition across topics of equal partition counts.
        """
        await self.send_in(event.message.tp, topic, key, value, partition, headers)

    async def send_in(self, tp: TP, topic: str, key: bytes | None, value: bytes | None,
                      partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send in the open transaction of input partition `tp` (see `send`): kept with it, and
        sent in record batches at its commit or once `FLUSH_BYTES` have gathered."""
        if partition is None:
            partition = self.partition_for(topic, key or b"")
        writes = self._open_transaction(tp)
        writes.outputs.setdefault((topic, partition), []).append((key, value, headers or []))
        await self._grown(tp, writes, len(value or b"") + len(key or b""))

    async def send_item(self, event: EventT, topic: str, key: bytes, item: dict[str, Any]) -> None:
        """Send `item`, about the resource `key`, in `event`'s transaction to `key`'s partition of
        `topic`, grouped with the items sent there just before it (`processors.grouped`)."""
        encoded = encode_item(key, item)
        partition = self.partition_for(topic, key)
        writes = self._open_transaction(event.message.tp)
        queue = writes.outputs.setdefault((topic, partition), [])
        last = queue[-1] if queue else None
        if isinstance(last, Group) and last.fits(encoded):
            last.add(encoded)
        else:
            queue.append(Group(key, encoded))
        await self._grown(event.message.tp, writes, len(encoded))

    async def _grown(self, tp: TP, writes: _Transaction, size: int) -> None:
        """`tp`'s open transaction `writes` took `size` more bytes: once `FLUSH_BYTES` have
        gathered, they go to its producer now (not while its previous transaction commits)."""
        writes.size += size
        if writes.size >= FLUSH_BYTES and self._tid(tp) not in self._held:
            await self._send_outputs(writes)

    async def _send_outputs(self, writes: _Transaction) -> None:
        """Hand `writes`' outputs to its producer, one record batch per topic partition (or
        more when one would exceed the producer's batch size), in the order they were sent."""
        outputs, writes.outputs, writes.size = writes.outputs, {}, 0
        changelogs, writes.changelogs = writes.changelogs, {}
        producer = writes.producer
        await _begin_unless_open(producer)
        for (topic, partition), queued in outputs.items():
            messages = [(m.key, m.value(), []) if isinstance(m, Group) else m for m in queued]
            sent = await send_batches(producer, topic, partition, messages)
            writes.delivered.extend(delivered for delivered, _ in sent)
        for (topic, partition), changes in changelogs.items():
            sent = await send_batches(producer, topic, partition, [(k, raw, []) for k, raw in changes.items()])
            writes.delivered.extend(delivered for delivered, _ in sent)
            delivered, count = sent[-1]
            writes.last_sent[topic] = (delivered, count - 1)

    async def send_committing(self, tid: str, producer: Any) -> None:
        """Send what `tid`'s committing transaction still holds and wait until the broker has it
        (called just before that transaction commits)."""
        writes = self._committing.get(tid)
        if writes is None or writes.producer is not producer:
            return
        await self._send_outputs(writes)
        await asyncio.gather(*writes.delivered)

    def hold_sends(self, offsets: Iterable[TP]) -> None:
        """The transactions of the producers that commit `offsets` are committing: their changes
        and outputs so far are theirs; what events send from now on waits for the next ones."""
        for tp in offsets:
            tid = self._tid(tp)
            self._held.add(tid)
            writes = self._open.pop(tid, None)
            if writes is not None:
                self._committing[tid] = writes

    async def release_sends(self) -> None:
        """The commit is over: outputs may go into the producers' new transactions again."""
        self._held.clear()

    def before_commit(self, hook: Callable[[TP], Awaitable[None]]) -> None:
        """Call `hook(tp)` inside the commit, before `tp`'s transaction commits its offset."""
        self._before_commit.append(hook)

    async def prepare_commit(self, tp: TP) -> None:
        """Ready `tp`'s transaction to commit: open, with what waits for it (`before_commit`) sent."""
        await self.ensure_transaction(tp)
        for hook in self._before_commit:
            await hook(tp)

    def partition_for(self, topic: str, key: bytes) -> int:
        return partitioning.partition_for(key, self.partitions[topic])


async def _begin_unless_open(producer: Any) -> None:
    if not seam.in_transaction(producer):
        await producer.begin_transaction()


@dataclass
class _Transaction:
    """One open or committing transaction of one partition: its table changes, not yet in
    RocksDB (point 9), and its outputs, not yet handed to the producer."""

    producer: Any  # the transactional producer whose transaction carries them
    partition: int  # the tables' partition they belong to
    changes: dict[str, dict[bytes, bytes | None]] = field(default_factory=dict)  # table -> key -> value
    # table -> a key's part up to its first NUL -> the keys of `changes` that begin with it, in order
    by_prefix: dict[str, dict[bytes, dict[bytes, None]]] = field(default_factory=dict)
    outputs: dict[tuple[str, int], list[_Output]] = field(default_factory=dict)  # (topic, partition) -> in order
    # (changelog topic, partition) -> key -> its last value (None: a tombstone), not yet sent
    changelogs: dict[tuple[str, int], dict[bytes, bytes | None]] = field(default_factory=dict)
    size: int = 0  # bytes of keys and values in `outputs` and `changelogs`
    delivered: list[Any] = field(default_factory=list)  # futures of the record batches sent so far
    # changelog -> (future of the record batch holding its last record, that record's index in it)
    last_sent: dict[str, tuple[Any, int]] = field(default_factory=dict)

    def absorb(self, later: _Transaction) -> None:
        """Take in `later`'s changes and outputs, which came after this transaction's own."""
        for name, changes in later.changes.items():
            self.changes.setdefault(name, {}).update(changes)
        for name, groups in later.by_prefix.items():
            mine = self.by_prefix.setdefault(name, {})
            for prefix, keys in groups.items():
                mine.setdefault(prefix, {}).update(keys)
        for destination, outputs in later.outputs.items():
            self.outputs.setdefault(destination, []).extend(outputs)
        for destination, changes in later.changelogs.items():
            self.changelogs.setdefault(destination, {}).update(changes)
        self.size += later.size
        self.delivered.extend(later.delivered)
        self.last_sent.update(later.last_sent)
