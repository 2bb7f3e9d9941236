"""Exactly-once processing on Faust's transactions, with the gaps we found closed.

Faust 0.15's `exactly_once` keeps one transactional producer per input partition and commits
the consumed offsets through it. Our kill tests showed three ways it loses or duplicates
effects, and this module closes each. It does so by replacing methods of Faust's classes,
listed in `_PATCHES` and put in place by `install()` (the worker's `create_app` calls it), which
refuses library versions they were not checked against; tests/test_faust_seam.py checks each
replaced or read private name against the installed classes:

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
commits as soon as its stream runs dry rather than at the next interval (`commit_when_idle`).

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
import bisect
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ProducerFenced
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer, TransactionManager
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as AIOKafkaThreadedConsumer
from faust.transport.drivers.aiokafka import Producer, server_list
from faust.types import TP, EventT
from rocksdict import WriteBatch

from processors import metrics, restore
from processors.grouped import Group, encode_item
from state.store import prefix_items
from topics import aiokafka_compat, partitioning
from topics.record_batches import send_batches

_original_commit_tps = Consumer._commit_tps
_original_perform_seek = Consumer.perform_seek
_original_on_recovery_completed = Recovery.on_recovery_completed
_original_resume_streams = Recovery._resume_streams
_original_on_rebalance = TransactionManager.on_rebalance
_original_active_remaining = Recovery.active_remaining
_original_standby_remaining = Recovery.standby_remaining
_original_get_assignment = CopartitionedAssignor.get_assignment
log = logging.getLogger(__name__)
_ATTRIBUTE = "reach_exactly_once"
_ABSENT = object()
_NO_CHANGES: dict[bytes, bytes | None] = {}
_PERSISTED_OFFSET = b"__faust\0offset__"  # Faust's key for how far a store reflects its changelog
# A transaction's outputs gathered beyond this are sent at once, before its commit.
FLUSH_BYTES = 1024 * 1024
# How many records back from a changelog's end its last committed record is first looked for.
TAIL_RECORDS = 2000
IDLE_S = 0.002  # how long the stream stays dry before an idle commit
RATE_S = 1.0  # over how long the rate of events is measured
IDLE_RATE = 100.0  # events per second up to which a worker commits whenever its stream runs dry
_Output = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]] | Group  # key, value, headers; or a group


async def _commit_tps_between_events(self: Consumer, tps: Iterable[TP], start_new_transaction: bool) -> bool:
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    if eos is None or not self.app.in_transaction:
        return await _original_commit_tps(self, tps, start_new_transaction)
    async with eos.commit_lock:
        async with eos.lock:  # between events: what the transactions hold is exactly theirs
            offsets = eos.committable(self.assignment(), self._committed_offset)
            for tp in offsets:
                await eos.prepare_commit(tp)
            for tp in offsets:  # Faust's own bookkeeping of acks is not used for these
                self._acked[tp].clear()
                self._acked_index[tp].clear()
                self._gap[tp].clear()
            if not offsets:
                return False
            eos.hold_sends(offsets)
        # Events go on meanwhile; what they send for these transactions waits for the next.
        started = time.monotonic()
        try:
            await self._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        except BaseException:
            eos.drop_committing()  # the commit failed: Faust stops the worker
            raise
        metrics.COMMIT_DURATION.observe(time.monotonic() - started)
        metrics.COMMITS.inc(len(offsets))
        eos.reopen_uncommitted()
        await eos.release_sends()
        return True


async def _on_rebalance_stopping_lost_producers(self: TransactionManager, assigned: set[TP], revoked: set[TP],
                                                newly_assigned: set[TP]) -> None:
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    owned = self._tps_to_transactional_ids(assigned)
    lost = sorted(tid for tid in self.producer._transaction_producers if tid not in owned)
    if lost:
        log.info("stopping transactional producers of partitions no longer assigned: %s", ", ".join(lost))
        # Not while one of them commits, nor while an event is half processed through one.
        async with eos.quiet() if eos is not None else contextlib.nullcontext():
            for tid in lost:
                try:
                    await self.producer.stop_transaction(tid)
                except Exception:  # already fenced: its transaction is the new owner's to abort
                    log.warning("stopping producer %s failed", tid, exc_info=True)
    await _original_on_rebalance(self, assigned, revoked, newly_assigned)


async def _commit_transactions_concurrently(self: Producer, tid_to_offset_map: Mapping[str, Mapping[TP, int]],
                                            group_id: str, start_new_transaction: bool = True) -> None:
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)

    async def commit(transactional_id: str, offsets: Mapping[TP, int]) -> None:
        async with self._trn_locks[transactional_id]:
            producer = self._transaction_producers.get(transactional_id)
            if producer is None:
                log.warning("commit invoked for unknown transaction %s", transactional_id)
                return
            try:
                if eos is not None:
                    await eos.send_committing(transactional_id, producer)
                await producer.send_offsets_to_transaction(offsets, group_id)
                await producer.commit_transaction()
            except ProducerFenced:
                if eos is None or set(offsets) & set(self.app.consumer.assignment()):
                    raise
                # Its partition moved in a rebalance and the new owner's producer fenced this one,
                # aborting the transaction: nothing of it is committed, and the partition's work
                # is the new owner's now. Faust stopped the worker here; it went on meanwhile.
                log.info("transaction %s was fenced by the new owner of its partition", transactional_id)
                eos.forget_committing(transactional_id)
                return
            if eos is not None:
                eos.store_committed(transactional_id, producer)
            if start_new_transaction:
                await producer.begin_transaction()

    await asyncio.gather(*(commit(tid, offsets) for tid, offsets in tid_to_offset_map.items()))


async def _highwaters_from_broker(self: AIOKafkaThreadedConsumer, partitions: list[TP]) -> Any:
    consumer = self._ensure_consumer()
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.beginning_offsets(partitions)
    bootstrap = server_list(self.transport.url, self.transport.default_port)
    found = await _after_last_records(bootstrap, {tp: (starts[tp], ends[tp]) for tp in partitions})
    # Faust's recovery takes the value minus one as the last offset to reach: the commit marker
    # after the last committed record, where our stores' checkpoints point (`_Transaction`).
    return {tp: offset + 1 for tp, offset in found.items()}


def _remaining_but_the_marker(self: Recovery) -> Any:
    """Records left to restore per partition, the commit marker at the end not counted: Faust's
    recovery never receives it (and took two idle 5-second polls to notice)."""
    return _but_the_marker(_original_active_remaining(self))


def _but_the_marker(remaining: Counter[TP]) -> Counter[TP]:
    return Counter({tp: max(0, n - 1) for tp, n in remaining.items()})


async def _after_last_records(bootstrap_servers: list[str], spans: Mapping[TP, tuple[int, int]]) -> dict[TP, int]:
    """For each changelog partition, the offset after its last committed *record* (its commit
    marker: one producer writes the partition), or its start if it has none.

    Its end (last stable offset) lies past that marker, and after a takeover often past a
    whole aborted transaction, neither of which Faust's recovery ever receives: it took two
    idle 5-second polls to notice (`Recovery._slurp_changelogs`), stopping every partition of
    a rebalance 10 s longer. The tail is read once (read_committed skips what Faust skips),
    from a window that grows until it holds a committed record."""
    found: dict[TP, int] = {tp: start for tp, (start, end) in spans.items()}
    todo = {tp: span for tp, span in spans.items() if span[1] > span[0]}
    if not todo:
        return found
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                              isolation_level="read_committed", fetch_max_wait_ms=10)
    await reader.start()
    try:
        window = TAIL_RECORDS
        while todo:
            atps = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
            reader.assign(list(atps))
            for atp, tp in atps.items():
                reader.seek(atp, max(todo[tp][0], todo[tp][1] - window))
            deadline = asyncio.get_running_loop().time() + 30
            reading = set(atps)
            while reading:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"could not read the end of {sorted(map(str, reading))}")
                for atp, records in (await reader.getmany(*reading, timeout_ms=200)).items():
                    if records:
                        found[atps[atp]] = records[-1].offset + 1
                reading = {atp for atp in reading if await reader.position(atp) < todo[atps[atp]][1]}
            todo = {tp: (start, end) for tp, (start, end) in todo.items()
                    if found[tp] == start and end - window > start}  # nothing committed in the window yet
            window *= 4
    finally:
        await reader.stop()
    return found


def _standby_remaining_but_the_marker(self: Recovery) -> Any:
    """As `_remaining_but_the_marker`, for standbys: they are ready once at their last record."""
    return _but_the_marker(_original_standby_remaining(self))


def _assignment_taking_over_warm(self: CopartitionedAssignor) -> Any:
    """Faust's assignment, except that a worker never takes a partition over cold.

    Faust gives a joining worker its share of active partitions at once, and the worker then
    restores them from their changelogs while they stop (541 s for half of 2,000,000 resources).
    As Kafka Streams does (KIP-441), a partition whose new owner held it neither active nor
    standby stays with its current owner, and the new one gets it as a standby; once its
    standbys are current it asks for another rebalance (`_ask_for_my_share_once_warm`), where
    it is warm and takes them."""
    before = {client: (set(a.actives), set(a.standbys)) for client, a in self._client_assignments.items()}
    result = _original_get_assignment(self)
    for partition in range(self.num_partitions):
        owner = next((c for c, a in result.items() if partition in a.actives), None)
        if owner is None or partition in before[owner][0] | before[owner][1]:
            continue
        keeper = next((c for c, (actives, _) in before.items() if c != owner and partition in actives), None)
        if keeper is None:
            continue  # no one holds it warm: the new owner restores it
        log.info("partition %d stays with its owner until its new one is warm", partition)
        _move(result, partition, owner, keeper)
        # Faust's sticky assignment picks which of the keeper's partitions to give up without
        # looking at standbys: one the new owner holds warm is given instead, if there is one.
        warm = next((p for p in sorted(result[keeper].actives) if p != partition and p in before[owner][1]), None)
        if warm is not None:
            _move(result, warm, keeper, owner)
    return result


def _move(assignment: Any, partition: int, source: str, destination: str) -> None:
    """`partition` becomes `destination`'s active and `source`'s standby."""
    assignment[source].actives.discard(partition)
    assignment[source].standbys.add(partition)
    assignment[destination].standbys.discard(partition)
    assignment[destination].actives.add(partition)


def _ask_for_my_share_once_warm(app: faust.App, eos: ExactlyOnce) -> None:
    """After a recovery that brought every standby to its changelog's end: a worker with fewer
    active partitions than its share asks for a rebalance, once per assignment (a sticky
    assignment that gives it none ends there), where it takes partitions it now holds warm."""
    assignor = app.assignor
    actives = {tp.partition for tp in assignor.assigned_actives()}
    standbys = {tp.partition for tp in assignor.assigned_standbys()} - actives
    workers = len(set(assignor.changelog_distribution) | {str(app.conf.canonical_url)})
    held = (frozenset(actives), frozenset(standbys))
    if not standbys or len(actives) >= app.conf.topic_partitions // workers or held == eos.asked_holding:
        return
    eos.asked_holding = held
    log.info("standbys of partitions %s are current: asking for a rebalance to take my share", sorted(standbys))
    thread = app.consumer._thread
    consumer = thread._ensure_consumer()

    async def rejoin() -> None:
        consumer._coordinator.request_rejoin()

    asyncio.ensure_future(thread.cast_thread(rejoin))


_original_build_offsets = Recovery._build_offsets
_NOT_YET = 2**62  # an offset no changelog event has: Faust's recovery skips events at or below it


async def _build_offsets_after_bulk_restore(self: Recovery, consumer: Any, tps: set[TP], destination: Counter[TP],
                                            title: str) -> None:
    """Bring each partition of `tps` to its changelog's end in bulk (`processors.restore`), then
    let Faust's recovery start from there: it reads the few records that came since.

    While the bulk restore runs, Faust's recovery loop must not apply changelog events of the
    same partitions still queued from before the rebalance (an older value would land over a
    newer one): their offsets in `destination` are set past any event's until it ends."""
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    if eos is None:
        return await _original_build_offsets(self, consumer, tps, destination, title)
    is_standby = title == "standby"
    if is_standby:
        eos.standbys_restored = False
    tables = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
    if tables:
        self.flush_buffers()
        before = {tp: destination.get(tp) for tp in tables}
        for tp in tables:
            destination[tp] = _NOT_YET
        try:
            spans = {TopicPartition(tp.topic, tp.partition): (table, -1 if before[tp] is None else before[tp])
                     for tp, table in tables.items()}
            await eos.restorer.restore(spans)
        finally:
            for tp, table in tables.items():
                persisted = table.persisted_offset(tp)
                destination[tp] = before[tp] if persisted is None else persisted
    if is_standby:
        eos.standbys_restored = True
    await _original_build_offsets(self, consumer, tps, destination, title)


_original_wait = Recovery._wait


async def _wait_as_long_as_it_takes(self: Recovery, coro: Any, timeout: Any = None) -> None:
    """Faust's wait for a step of its recovery, without its timeout (`broker_request_timeout`,
    90 s). A step that outlived it did not fail: mode reports a timed-out wait as the service
    stopping, and the recovery loop ended for good, the worker processing nothing ever after. A
    restore in bulk of a large partition takes longer than that; broker requests in the steps
    keep their own timeouts, and a new rebalance still interrupts any step."""
    await _original_wait(self, coro, None)


def _verify_fetching_only(self: AIOKafkaThreadedConsumer, now: float, tp: TP) -> None:
    """Faust's liveness check of a partition, without its half about streams: that half reads
    the monitor's inbound times, which this app does not keep (`processors.app` removes the
    monitor from the per-event sensors), and takes a position short of the highwater for
    unprocessed records, when under exactly-once every idle partition ends in a commit marker.
    It logged every partition as stuck, at ERROR, several times a second from a worker's fifth
    minute on. The checks of fetch requests and responses stay."""
    self._verify_aiokafka_event_path(now, tp)


_original_create_worker_consumer = AIOKafkaThreadedConsumer._create_worker_consumer
FETCH_MAX_WAIT_MS = 100


def _worker_consumer_answering_soon(self: AIOKafkaThreadedConsumer, transport: Any) -> AIOKafkaConsumer:
    """Faust's consumer, its long polls cut from 1.5 s to FETCH_MAX_WAIT_MS.

    The broker answers one connection's requests in order, and a fetch of partitions with
    nothing new waits out its whole long poll: every offset request of a recovery (earliest
    offsets, seeks, positions) queued behind one took ~1.5 s, four or five of them in a row at
    each rebalance, while the partitions being moved stood still. An idle worker now sends ten
    fetches a second instead of one; a fetch with records returns at once either way."""
    consumer = _original_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
    return consumer


async def _perform_seek_knowing_where_each_partition_resumes(self: Consumer) -> None:
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    if eos is None or not self.app.in_transaction:
        return await _original_perform_seek(self)
    epoch = eos.epoch
    await _original_perform_seek(self)  # asks the group for the committed offsets (and seeks)
    inputs = sorted(tp for tp in self.assignment() if tp.topic in eos.inputs)
    committed = {tp: self._committed_offset.get(tp) for tp in inputs}  # None: never, or 0
    never = [TopicPartition(tp.topic, tp.partition) for tp, offset in committed.items() if offset is None]
    starts = await self._thread.call_thread(_log_starts, self._thread, never) if never else {}
    points = {tp: offset if offset is not None else starts[TopicPartition(tp.topic, tp.partition)]
              for tp, offset in committed.items()}
    eos.resume_from(epoch, points)


async def _seek_to_resume_points(app: faust.App) -> None:
    """Move every input partition's fetch position to the next offset `in_order` expects.

    Called once a rebalance's recovery has resumed the streams: resuming clears the streams'
    queues, so records fetched before were dropped and Faust's own filter
    (`_read_offset`) would not let them through again; a seek back delivers them again
    (`in_order` skips the ones it has processed since).
    """
    eos: ExactlyOnce | None = getattr(app, _ATTRIBUTE, None)
    if eos is None or not app.in_transaction:
        return
    points = eos.resume_points()
    if not points:
        return
    consumer = app.consumer
    await consumer._thread.call_thread(_seek_to, consumer._thread, points)
    for tp, offset in points.items():
        consumer._read_offset[tp] = offset or None


async def _on_recovery_completed_then_seek(self: Recovery, generation_id: int = 0) -> None:
    await _original_on_recovery_completed(self, generation_id)
    await _seek_to_resume_points(self.app)
    eos: ExactlyOnce | None = getattr(self.app, _ATTRIBUTE, None)
    if eos is not None and eos.standbys_restored:
        _ask_for_my_share_once_warm(self.app, eos)


async def _resume_streams_then_seek(self: Recovery, generation_id: int = 0) -> None:
    await _original_resume_streams(self, generation_id)
    await _seek_to_resume_points(self.app)


async def _log_starts(thread: AIOKafkaThreadedConsumer, partitions: list[TopicPartition]) -> dict[Any, int]:
    """In the consumer's thread: the first offset of each of `partitions`."""
    return await thread._ensure_consumer().beginning_offsets(partitions)


async def _seek_to(thread: AIOKafkaThreadedConsumer, offsets: Mapping[TP, int]) -> None:
    """In the consumer's thread: move each partition's fetch position to its offset."""
    consumer = thread._ensure_consumer()
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        atp = TopicPartition(tp.topic, tp.partition)
        if atp in assigned:  # a rebalance may have begun since: those positions are reset anyway
            consumer.seek(atp, offset)


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
        self._reader: AIOKafkaConsumer | None = None
        self.restorer = restore.Restorer(bootstrap_servers)  # table partitions in bulk at a rebalance
        self.standbys_restored = False  # this rebalance's restore brought every standby to its end
        self.asked_holding: tuple[frozenset[int], frozenset[int]] | None = None  # see _ask_for_my_share_once_warm
        self._read_ahead: dict[TP, tuple[int, int, list[Any]]] = {}  # see _records_between
        self.partitions = partitions
        self.lock = asyncio.Lock()  # held by each event, and by a commit while it takes its offsets
        self.commit_lock = asyncio.Lock()  # one commit at a time
        self._idle = asyncio.Event()  # set when the stream has nothing more to process for now
        # Events processed, decaying by e per RATE_S: over RATE_S, the rate of events.
        self._events, self._events_at = 0.0, 0.0
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
        self._tables: dict[str, faust.Table] = {}
        self._changelog_of: dict[str, str] = {}  # table name -> its changelog topic
        setattr(app, _ATTRIBUTE, self)

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
        skipped = await self._records_between(tp, expected, offset) if offset > expected else []
        if skipped:
            log.warning("%d records of %s before offset %s were skipped by the stream; processing them first",
                        len(skipped), tp, offset)
        return [*skipped, event]

    async def _records_between(self, tp: TP, start: int, end: int) -> list[Any]:
        """The committed records of `tp` in [start, end); a hole of markers only gives [].

        Holes are mostly transaction markers, one per upload and partition. What one fetch
        returned is kept, so that the next holes are answered without asking Kafka again.
        """
        known = self._read_ahead.get(tp)
        if known is None or not (known[0] <= start and end <= known[1]):
            known = self._read_ahead[tp] = await self._fetch_from(tp, start, end)
        records = known[2]
        first = bisect.bisect_left(records, start, key=lambda r: r.offset)
        found = []
        for record in records[first:]:
            if record.offset >= end:
                break
            found.append(_SkippedRecord(record.key, record.value, _Message(
                tp.topic, tp.partition, record.offset, tp, list(record.headers or []))))
        return found

    async def _fetch_from(self, tp: TP, start: int, end: int) -> tuple[int, int, list[Any]]:
        """(start, position, every committed record in between), reading at least up to `end`."""
        if self._reader is None:
            self._reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False,
                                            isolation_level="read_committed", fetch_max_wait_ms=10)
            await self._reader.start()
        reader, atp = self._reader, TopicPartition(tp.topic, tp.partition)
        reader.assign([atp])
        reader.seek(atp, start)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + 30
        while (position := await reader.position(atp)) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {tp} [{start}, {end}) back from Kafka")
            records.extend((await reader.getmany(atp, timeout_ms=500)).get(atp, []))
        return start, position, records

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
        await self.restorer.close()

    def forget(self, tps: Iterable[TP]) -> None:
        """A rebalance began: no event of `tps` is processed until `resume_from` says where."""
        self.epoch += 1
        for tp in tps:
            self.expected.pop(tp, None)
            self._resumable.discard(tp)
            self._early.discard(tp)
            self._read_ahead.pop(tp, None)

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
        return self.app.consumer._committed_offset.get(tp)

    def done(self, event: EventT) -> None:
        """Mark `event` processed: its offset goes into the next commit of its partition."""
        tp = event.message.tp
        self.expected[tp] = event.message.offset + 1
        self.processed[tp] = (event.message.offset + 1, self.producer_of(tp))

    def committable(self, assigned: set[TP], committed: dict[TP, int | None]) -> dict[TP, int]:
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
        return self.app.producer._transaction_producers.get(self._tid(tp))

    def _tid(self, tp: TP) -> str:
        tid = self._tids.get(tp)
        if tid is None:  # fixed for the app's life: agents and their topics don't change
            group = self.app.assignor.group_for_topic(tp.topic)
            tid = self._tids[tp] = f"{self.app.conf.id}-{group}-{tp.partition}"
        return tid

    # Tables: RocksDB stores with bytes keys and JSON values. A table's partition p holds what
    # events of input partition p wrote (Faust's rule), so an event reads and writes the store
    # of its own partition, directly: Faust's mapping interface looks a key up two or three
    # times and encodes through its serializer registry, per call. Changes wait with their
    # transaction and reach RocksDB once it has committed (point 9).

    def get(self, event: EventT, table: faust.Table, key: bytes) -> Any:
        """`table[key]` in `event`'s partition, or None, including changes not yet committed."""
        tid = self._tid(event.message.tp)
        for writes in (self._open_writes(event.message.tp), self._committing.get(tid)):
            if writes is not None:
                raw = writes.changes.get(table.name, _NO_CHANGES).get(key, _ABSENT)
                if raw is not _ABSENT:
                    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]
        raw = table.data._db_for_partition(event.message.partition).get(key)
        return None if raw is None else orjson.loads(raw)

    def keys_with_prefix(self, event: EventT, table: faust.Table, prefix: bytes, skip: bytes | None = None,
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
        for key, _ in prefix_items(table.data._db_for_partition(event.message.partition), prefix):
            if len(found) >= limit:
                break
            if key not in overlay and key != skip:  # changes still uncommitted were counted above
                found.append(key)
        return found

    async def put(self, event: EventT, table: faust.Table, key: bytes, value: Any) -> None:
        """`table[key] = value`, its changelog record sent in `event`'s transaction."""
        await self._change(event, table, key, orjson.dumps(value))

    async def delete(self, event: EventT, table: faust.Table, key: bytes) -> None:
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

    async def _change(self, event: EventT, table: faust.Table, key: bytes, raw: bytes | None) -> None:
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

    def partition_items(self, table: faust.Table, partition: int) -> list[tuple[bytes, Any]]:
        """Every (key, value) this worker holds for one partition of `table`, uncommitted changes included."""
        db = table.data._db_for_partition(partition)
        found: dict[bytes, bytes | None] = {k: v for k, v in db.items() if not k.startswith(b"__faust")}
        producers = self.app.producer._transaction_producers
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
            sent = last[0] if last is not None else None
            if sent is not None and sent.done() and not sent.cancelled() and sent.exception() is None:
                # The offset after the last record is the transaction's commit marker: only this
                # producer writes the partition, and its next transaction began after the commit.
                # A restore starts there, and one with nothing after it has nothing to do.
                batch.put(_PERSISTED_OFFSET, str(sent.result().offset + last[1] + 1).encode())
            # With RocksDB's write-ahead log: a SIGKILL right after loses nothing written here.
            table.data._db_for_partition(writes.partition).write(batch)

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

    def event_began(self) -> None:
        """The agent took an event (for `commit_when_idle`)."""
        self._idle.clear()

    def event_ended(self, dry: bool) -> None:
        """The agent is done with its event; `dry`: nothing else is waiting in its stream."""
        now = time.monotonic()
        self._events = self._events * math.exp((self._events_at - now) / RATE_S) + 1
        self._events_at = now
        if dry:
            self._idle.set()

    def event_rate(self) -> float:
        """Events processed per second, lately (an average decaying over `RATE_S`)."""
        return self._events * math.exp((self._events_at - time.monotonic()) / RATE_S) / RATE_S

    async def commit_when_idle(self) -> None:
        """Commit whenever the stream of a worker with few events runs dry (an app task).

        Results become visible at the commit, so a worker that is not busy commits at once,
        not at the next commit interval: a batch's latency no longer includes that wait,
        nor a dependency's release, which crosses two transactions, two. But each commit
        costs round trips per partition, and a stream of many small events (dependency
        requests and answers, one-record messages) runs dry between fetches and while it
        waits for answers: committing at each of those made 4-10 times as many commits and
        halved the speed of references and cascades. Past `IDLE_RATE` events per second the
        interval alone paces the commits, as before; uploads travel as a few large messages
        per batch and stay below it.
        """
        while True:
            await self._idle.wait()
            # Faust hands fetched records to the stream one at a time: give it the chance to
            # hand over the rest of a fetch before deciding that the stream is dry.
            await asyncio.sleep(IDLE_S)
            if not self._idle.is_set():
                continue  # an event began meanwhile; its end asks again
            self._idle.clear()
            if self.event_rate() > IDLE_RATE:
                continue
            # A commit already under way (the interval's) makes this call wait for it and
            # return without committing what came after its offsets: ask once more.
            if not await self.app.consumer.commit():
                await self.app.consumer.commit()


async def _begin_unless_open(producer: Any) -> None:
    if not producer._txn_manager.is_in_transaction():
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


@dataclass(frozen=True)
class _Message:
    topic: str
    partition: int
    offset: int
    tp: TP
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class _SkippedRecord:
    """A record read back from Kafka, shaped like the parts of a Faust event we use."""

    key: bytes | None
    value: bytes | None
    message: _Message


# What `install` replaces: (class, attribute, our version). Each replacement's docstring says
# the gap it closes; tests/test_faust_seam.py checks every name against the installed classes.
_PATCHES: list[tuple[type, str, Callable[..., Any]]] = [
    (Consumer, "_commit_tps", _commit_tps_between_events),
    (TransactionManager, "on_rebalance", _on_rebalance_stopping_lost_producers),
    (Producer, "commit_transactions", _commit_transactions_concurrently),
    (AIOKafkaThreadedConsumer, "_highwaters", _highwaters_from_broker),
    (Recovery, "active_remaining", _remaining_but_the_marker),
    (Recovery, "standby_remaining", _standby_remaining_but_the_marker),
    (CopartitionedAssignor, "get_assignment", _assignment_taking_over_warm),
    (Recovery, "_build_offsets", _build_offsets_after_bulk_restore),
    (Recovery, "_wait", _wait_as_long_as_it_takes),
    (AIOKafkaThreadedConsumer, "verify_event_path", _verify_fetching_only),
    (AIOKafkaThreadedConsumer, "_create_worker_consumer", _worker_consumer_answering_soon),
    (Recovery, "on_recovery_completed", _on_recovery_completed_then_seek),
    (Recovery, "_resume_streams", _resume_streams_then_seek),
    (Consumer, "perform_seek", _perform_seek_knowing_where_each_partition_resumes),
]
# What each replaced attribute was before `install` (this module is imported before it runs).
_ORIGINALS = {(owner, attribute): getattr(owner, attribute) for owner, attribute, _ in _PATCHES}
# The versions these replacements, and the private names read in this module, were checked
# against (tests/test_faust_seam.py); pyproject.toml pins them.
CHECKED_VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1"}


def install() -> None:
    """Put this module's replacements into Faust's classes (process-wide; once is enough).

    Refuses, with what it found, when faust-streaming, mode-streaming or aiokafka is not the
    version they were checked against: a renamed private attribute would otherwise not fail
    but quietly change what is committed."""
    aiokafka_compat.require_checked(CHECKED_VERSIONS)
    aiokafka_compat.install()
    for owner, attribute, replacement in _PATCHES:
        setattr(owner, attribute, replacement)
