"""Every use of Faust's, mode's and aiokafka's private names: one module, installed explicitly.

The service closes gaps of these libraries by replacing methods of their classes and reading
some of their private attributes. All of it is here, each replacement's docstring saying the
gap it closes, so that an upgrade has one place to check; nowhere else in the service names a
private part of them. `install_aiokafka()` (the ingress, the worker) and `install_faust()` (the
worker: our exactly-once on Faust's transactions, `processors.transactions`) put the
replacements in place and refuse library versions they were not checked against
(`CHECKED_VERSIONS`, which pyproject.toml pins). `tests/test_faust_seam.py` and
`tests/test_aiokafka_seam.py` check every replaced or read name and signature against the
installed classes, without a broker (`tests/test_group_fencing.py` the KIP-447 requests against
the real broker); the kill and fault tests check what the replacements do, end to end.

Faust is imported only by what needs it, so the ingress does not load it.

## aiokafka: asking again sooner while a transaction coordinator is busy

A transactional producer meets three answers that only mean "the coordinator is writing to
the transaction log right now, ask again": CONCURRENT_TRANSACTIONS to AddPartitionsToTxn and
AddOffsetsToTxn right after the previous transaction's commit (its markers are still being
written), and NOT_ENOUGH_REPLICAS to a produce request whose transaction the partition leader
could not verify because the coordinator was writing for the same transaction — the
conversion of CONCURRENT_TRANSACTIONS that Kafka (KIP-890 part 1, `transaction.partition.
verification.enable`, on by default) makes for clients that predate it, aiokafka among them.
The worker meets the last at most commits: it sends a transaction's outputs and at once adds
the consumer group's offsets (AddOffsetsToTxn), which the coordinator writes while the leader
verifies the produce; the offsets' own verification, racing the same way, comes back to
TxnOffsetCommit as COORDINATOR_NOT_AVAILABLE. The ingress meets it when one upload's partitions
are added one request after another.

aiokafka waits `retry_backoff_ms` (100 ms by default) before each of these retries (only the
first AddPartitionsToTxn of a transaction has a 20 ms override, as in Java's KAFKA-5477): one
commit in three of a busy worker took over 100 ms (`reach_commit_duration_seconds`) and a
dependency's release, which crosses two commits, paid it twice. What the coordinator writes
takes a few milliseconds. Lowering `retry_backoff_ms` itself would make every other retry
(coordinator lookups, metadata, a partition whose replicas really are missing) twenty times as
frequent while a broker is down.

`install_aiokafka()` shortens only these waits: after CONCURRENT_TRANSACTIONS always; after
NOT_ENOUGH_REPLICAS to a transactional produce once per record batch, and after
COORDINATOR_NOT_AVAILABLE or COORDINATOR_LOAD_IN_PROGRESS to TxnOffsetCommit once until the
producer's next offset commit succeeds (a second one may be a real shortage of replicas or a
coordinator that moved, and waits the usual backoff). It wraps `handle_response` of
aiokafka's private request handlers; `tests/test_aiokafka_seam.py` checks those names and
shapes against the installed aiokafka.

## Faust: the gaps of its exactly-once processing

`processors.transactions` says what each closes (its points 1-9); the replacements below are
the parts of it that must live inside Faust's classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    IllegalGenerationError,
    KafkaError,
    NotEnoughReplicasError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from aiokafka.producer import sender
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import TxnOffsetCommitRequest_v0, TxnOffsetCommitResponse_v0
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields
from aiokafka.structs import OffsetAndMetadata

if TYPE_CHECKING:
    import faust
    from faust.assignor.copartitioned_assignor import CopartitionedAssignor
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer, TransactionManager
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.types import TP, AppT, TableT

    from processors.transactions import ExactlyOnce

log = logging.getLogger(__name__)
# The versions every replacement and private name here were checked against; pyproject.toml pins them.
CHECKED_VERSIONS = {"aiokafka": "0.14.0", "faust-streaming": "0.15.3", "mode-streaming": "0.7.1"}


# --- aiokafka

SOON_S = 0.005  # how long to wait before asking again instead
_INSTALLED = "_reach_asks_again_sooner"
_FENCES = "_reach_fences_former_members"  # on TxnOffsetCommitHandler's, around the one asking sooner
_RETRIED_SOON = "_reach_retried_soon"  # on a record batch: its one quick retry is spent


def _offsets_concurrent(response: Any) -> bool:
    return bool(response.error_code == ConcurrentTransactions.errno)


def _partitions_concurrent(response: Any) -> bool:
    return any(code == ConcurrentTransactions.errno for _, partitions in response.errors for _, code in partitions)


def _sooner(handle_response: Callable[[Any, Any], float | None],
            concurrent: Callable[[Any], bool]) -> Callable[[Any, Any], float | None]:
    def handle_response_sooner(self: Any, response: Any) -> float | None:
        backoff = handle_response(self, response)
        if backoff is not None and concurrent(response):
            return min(backoff, SOON_S)
        return backoff

    setattr(handle_response_sooner, _INSTALLED, True)
    return handle_response_sooner


def _produce_sooner(handle_response: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def handle_response_sooner(self: Any, response: Any) -> None:
        handle_response(self, response)  # fills self._to_reenqueue, waited for by `do` after its backoff
        txn_manager = self._sender._txn_manager
        if not self._to_reenqueue or txn_manager is None or txn_manager.transactional_id is None:
            return
        unverified = {(topic, partition[0]) for topic, partitions in response.topics for partition in partitions
                      if partition[1] == NotEnoughReplicasError.errno}
        batches = self._to_reenqueue
        if all((b.tp.topic, b.tp.partition) in unverified and not getattr(b, _RETRIED_SOON, False) for b in batches):
            for batch in batches:
                setattr(batch, _RETRIED_SOON, True)
            self._default_backoff = min(self._default_backoff, SOON_S)  # this request's handler only

    setattr(handle_response_sooner, _INSTALLED, True)
    return handle_response_sooner


def _offset_commit_sooner(handle_response: Callable[[Any, Any], float | None]) -> Callable[[Any, Any], float | None]:
    busy = {0, CoordinatorNotAvailableError.errno, CoordinatorLoadInProgressError.errno}

    def handle_response_sooner(self: Any, response: Any) -> float | None:
        backoff = handle_response(self, response)
        txn_manager = self._sender._txn_manager
        if backoff is None:
            setattr(txn_manager, _RETRIED_SOON, False)
            return None
        codes = {code for _, partitions in response.errors for _, code in partitions}
        if codes <= busy and not getattr(txn_manager, _RETRIED_SOON, False):
            setattr(txn_manager, _RETRIED_SOON, True)  # until an offset commit of this producer succeeds
            return min(backoff, SOON_S)
        return backoff

    setattr(handle_response_sooner, _INSTALLED, True)
    return handle_response_sooner


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def require_checked(names: tuple[str, ...] = tuple(CHECKED_VERSIONS)) -> None:
    """Raise RuntimeError unless each library of `names` is the version our use of its private
    names was checked against (`CHECKED_VERSIONS`)."""
    wanted = {name: CHECKED_VERSIONS[name] for name in names}
    installed = {name: _installed(name) for name in wanted}
    wrong = {name: found for name, found in installed.items() if found != wanted[name]}
    if wrong:
        found = ", ".join(f"{name} {wrong[name]} (checked: {wanted[name]})" for name in sorted(wrong))
        raise RuntimeError(f"refusing to start on {found}: this service replaces and reads private parts of "
                           "these libraries, checked for the versions pyproject.toml pins (tests/test_faust_seam.py, "
                           "tests/test_aiokafka_seam.py); install those versions, or check the new ones first")


def install_aiokafka() -> None:
    """Make aiokafka's producers ask again sooner while a transaction coordinator is busy
    (process-wide; calling it again changes nothing). Refuses an aiokafka it was not checked
    against (`require_checked`)."""
    require_checked(("aiokafka",))
    for handler, concurrent in ((sender.AddPartitionsToTxnHandler, _partitions_concurrent),
                                (sender.AddOffsetsToTxnHandler, _offsets_concurrent)):
        if not getattr(handler.handle_response, _INSTALLED, False):
            handler.handle_response = _sooner(handler.handle_response, concurrent)
    offsets = sender.TxnOffsetCommitHandler
    if not getattr(offsets.handle_response, _FENCES, False):
        offsets.handle_response = _offset_commit_fenced(_offset_commit_sooner(offsets.handle_response))
        offsets.create_request = _txn_offset_commit_request_with_member
    produce = sender.SendProduceReqHandler
    if not getattr(produce.handle_response, _INSTALLED, False):
        produce.handle_response = _produce_sooner(produce.handle_response)


# --- aiokafka: the group member in each transactional offset commit (KIP-447)

FENCED_INSTANCE_ID = 82  # a newer member took this one's group.instance.id (aiokafka names no class for it)
_FENCING = {IllegalGenerationError.errno, UnknownMemberIdError.errno, RebalanceInProgressError.errno,
            FENCED_INSTANCE_ID}


class GroupMembershipFenced(KafkaError):
    """The group coordinator refused a transactional offset commit: its member or generation is
    no longer the group's (a rebalance moved on without it). The transaction is to be aborted."""

    retriable = False


@dataclass(frozen=True)
class GroupMember:
    """Who commits a consumer group's offsets: the generation and member id its consumer joined
    with, and its static id (KIP-345), as the group coordinator checks them (KIP-447)."""

    generation_id: int
    member_id: str
    group_instance_id: str | None


class _TxnOffsetCommitResponse_v3(Response):
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(("name", CompactString("utf-8")),
                                ("partitions", CompactArray(("partition_index", Int32), ("error_code", Int16),
                                                            ("tags", TaggedFields))),
                                ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = _TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable
        ("topics", CompactArray(("name", CompactString("utf-8")),
                                ("partitions", CompactArray(("partition_index", Int32), ("committed_offset", Int64),
                                                            ("committed_leader_epoch", Int32),
                                                            ("committed_metadata", CompactString("utf-8")),
                                                            ("tags", TaggedFields))),
                                ("tags", TaggedFields))),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v0 | _TxnOffsetCommitRequest_v3]):
    """TxnOffsetCommit as aiokafka's, and at version 3 (where the broker has it) with the group
    member that commits: aiokafka sends only version 0, which the coordinator cannot fence."""

    API_KEY = 28

    def __init__(self, transactional_id: str, group_id: str, producer_id: int, producer_epoch: int,
                 member: GroupMember | None, topics: list[tuple[str, list[tuple[int, int, str]]]]) -> None:
        self._args = (transactional_id, group_id, producer_id, producer_epoch)
        self._member = member or GroupMember(-1, "", None)  # -1 and "": not checked (a producer of no group)
        self._topics = topics

    def build(self, request_struct_class: type[Any]) -> Any:
        if request_struct_class.API_VERSION == 0:
            return request_struct_class(*self._args, self._topics)
        m = self._member
        topics: list[Any] = [
            (topic, [(partition, offset, -1, metadata, {}) for partition, offset, metadata in partitions], {})
            for topic, partitions in self._topics]
        return request_struct_class(*self._args, m.generation_id, m.member_id, m.group_instance_id, topics, {})


# group id -> the member its next transactional offset commit is made as (`commit_as`)
_COMMITTING_AS: dict[str, GroupMember] = {}


def commit_as(group_id: str, member: GroupMember) -> None:
    """Make this process's next transactional offset commits for `group_id` carry `member`, so
    that the group coordinator refuses them once the group has moved on without it."""
    _COMMITTING_AS[group_id] = member


def _txn_offset_commit_request_with_member(self: Any) -> Any:
    """aiokafka's TxnOffsetCommitHandler.create_request, with the committing group member
    (`commit_as`): at version 0 the coordinator takes any producer's offsets, so that a worker
    the group had dropped (a long pause, a cut network) could still commit offsets of partitions
    another worker had taken over — with one transaction per worker (`processors.transactions`),
    its transactional id fences nobody else's."""
    txn_manager = self._sender._txn_manager
    offset_data: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for tp, offset in sorted(self._offsets.items()):
        offset_data[tp.topic].append((tp.partition, offset.offset, offset.metadata))
    return _TxnOffsetCommitRequest(txn_manager.transactional_id, self._group_id, txn_manager.producer_id,
                                   txn_manager.producer_epoch, _COMMITTING_AS.get(self._group_id),
                                   list(offset_data.items()))


def _offset_commit_fenced(handle_response: Callable[[Any, Any], float | None]) -> Callable[[Any, Any], float | None]:
    """aiokafka's response handling, for a version 3 answer too, and with the coordinator's
    refusal of a member no longer in the group ending the transaction in an abortable error
    (aiokafka's own handling raised it inside its sender task, which then failed for good)."""

    def handle_response_fenced(self: Any, response: Any) -> float | None:
        if response.API_VERSION == 3:
            response = TxnOffsetCommitResponse_v0(
                response.throttle_time_ms,
                [(name, [(partition, code) for partition, code, _ in partitions]) for name, partitions, _ in
                 response.topics])
        codes = {code for _, partitions in response.errors for _, code in partitions}
        if codes & _FENCING:
            member = _COMMITTING_AS.get(self._group_id)
            self._sender._txn_manager.error_transaction(GroupMembershipFenced(
                f"group {self._group_id} refused the offsets of {member} (error codes {sorted(codes)})"))
            return None
        return handle_response(self, response)

    setattr(handle_response_fenced, _FENCES, True)
    return handle_response_fenced


# --- Faust's private state that `processors.transactions` and the worker read

_ATTRIBUTE = "reach_exactly_once"
_ORIGINALS: dict[str, Callable[..., Any]] = {}  # "Class.attribute" -> what `install_faust` replaced
# Faust's key, inside each table store, for how far the store reflects its changelog.
PERSISTED_OFFSET_KEY = b"__faust\0offset__"
# How many records back from a changelog's end its last committed record is first looked for.
TAIL_RECORDS = 2000


def attach(app: faust.App, eos: ExactlyOnce) -> None:
    """Make `eos` the exactly-once processing the replacements in `app`'s classes consult."""
    setattr(app, _ATTRIBUTE, eos)


def exactly_once_of(app: Any) -> ExactlyOnce | None:
    return getattr(app, _ATTRIBUTE, None)


def table_store(table: TableT, partition: int) -> Any:
    """The RocksDB store (rocksdict `Rdict`) of one partition of `table`."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined]


def table_stores(table: TableT) -> list[Any]:
    """Every open RocksDB store of `table`."""
    return list(table.data._dbs.values())  # type: ignore[attr-defined]


def transaction_producers(app: AppT) -> dict[str, Any]:
    """Faust's transactional producers by transactional id (one per input partition): one dict
    for the app's life, a class attribute changed in place, so a reference to it stays current."""
    return app.producer._transaction_producers  # type: ignore[attr-defined]


def committed_offset(app: AppT, tp: TP) -> int | None:
    """The input partition's offset as the group last committed it (None: never, or 0)."""
    return app.consumer._committed_offset.get(tp)  # type: ignore[attr-defined]


def worker_transactional_id(app: AppT) -> str:
    """The transactional id of the worker's one producer: its group member's static id
    (KIP-345), as stable as the worker's data folder, so that a restarted worker fences the
    transaction its former self left open at once, as it takes its partitions back."""
    return f"{app.conf.id}-{app.conf.consumer_group_instance_id}"


def group_member(app: AppT) -> GroupMember | None:
    """The generation and member id the worker's consumer is in the group with now (None while
    it has none: it is joining, or the group dropped it)."""
    consumer = _consumer_thread(app.consumer)._consumer
    coordinator = consumer._coordinator if consumer is not None else None
    if coordinator is None or coordinator.generation < 0 or not coordinator.member_id:
        return None
    return GroupMember(coordinator.generation, coordinator.member_id, app.conf.consumer_group_instance_id)


def _consumer_thread(consumer: Any) -> AIOKafkaConsumerThread:
    """The thread Faust's consumer delegates to (`ThreadDelegateConsumer._thread`)."""
    return consumer._thread


def _or_none_read(offset: int | None) -> int:
    """The last offset a table holds, -1 for none (what `processors.restore` takes)."""
    return -1 if offset is None else offset


def in_transaction(producer: Any) -> bool:
    """Whether an aiokafka transactional producer has a transaction open."""
    return bool(producer._txn_manager.is_in_transaction())


# --- Faust's classes, replaced

async def _commit_tps_between_events(self: Consumer, tps: Iterable[TP], start_new_transaction: bool) -> bool:
    eos: ExactlyOnce | None = exactly_once_of(self.app)
    if eos is None or not self.app.in_transaction:
        return await _ORIGINALS["Consumer._commit_tps"](self, tps, start_new_transaction)
    async with eos.commit_lock:
        async with eos.lock:  # between events: what the transaction holds is exactly theirs
            if eos.failed is not None:  # Faust's commit at the stop, or its interval's, after a failure
                return False
            offsets = eos.committable(self.assignment(), self._committed_offset)
            if not offsets:
                return False
            await eos.prepare_commit()
            for tp in offsets:  # Faust's own bookkeeping of acks is not used for these
                self._acked[tp].clear()
                self._acked_index[tp].clear()
                self._gap[tp].clear()
            eos.hold()
        # Events go on meanwhile; what they send waits for the next transaction.
        started = time.monotonic()
        try:
            await _commit_the_transaction(self.app, eos, offsets, start_new_transaction)
        except BaseException as exc:
            eos.fail(exc)  # the worker stops; nothing it processed since its last commit commits
            eos.transactions.drop_committing()
            raise
        # Not Faust's `_commit_offsets`: it drops the offsets of partitions no longer assigned,
        # whose events' outputs this one transaction carries all the same.
        self._committed_offset.update(offsets)
        self.app.monitor.on_tp_commit(offsets)
        eos.committed(time.monotonic() - started, offsets)
        eos.release()
        return True


async def _commit_the_transaction(app: AppT, eos: ExactlyOnce, offsets: Mapping[TP, int],
                                  start_new_transaction: bool) -> None:
    """Commit the worker's one transaction: what its partitions' events sent, their table
    changes' changelog records and their offsets, the offsets as the group member the worker is
    now (`commit_as`: a worker the group dropped is refused). On any failure the transaction is
    aborted, so that nothing of it holds other readers back, and the failure raised."""
    producer = eos.transactions.producer()
    if producer is None:
        raise RuntimeError("no transactional producer to commit with (the worker holds no partition)")
    try:
        member = group_member(app)
        if member is None:
            raise GroupMembershipFenced(f"the worker is not a member of group {app.conf.id} now: its offsets "
                                        "would not be checked")
        await eos.outputs.send_committing(producer)
        commit_as(app.conf.id, member)
        # The worker's transactional id in the metadata: a worker taking these partitions over
        # reads who committed them last, to fence it if it left a transaction open
        # (`processors.handover`).
        mine = worker_transactional_id(app)
        await producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(offset, mine) for tp, offset in offsets.items()}, app.conf.id)
        await producer.commit_transaction()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.abort_transaction()
        raise
    eos.tables.store_committed(producer)
    if start_new_transaction:
        await producer.begin_transaction()


async def _commit_before_revocation(self: TransactionManager, revoked: set[TP]) -> None:
    """Faust's flush, then a commit of everything processed so far, while the group still
    counts this worker as the partitions' owner (the revocation comes before it rejoins): one
    transaction carries every partition's work, so it cannot be left to the next commit nor
    dropped for the partitions that go."""
    await _ORIGINALS["TransactionManager.on_partitions_revoked"](self, revoked)
    if exactly_once_of(self.app) is not None and not await self.app.consumer.commit():
        await self.app.consumer.commit()  # one under way took its offsets before the last events: again


async def _on_rebalance_with_one_producer(self: TransactionManager, assigned: set[TP], revoked: set[TP],
                                          newly_assigned: set[TP]) -> None:
    """The worker's one transactional producer (Faust starts one per partition): started with
    its first active partition — its transactional id fences the transaction a former process
    of the same worker left open — stopped when it has none; then, for the partitions it takes
    over, the waits of `processors.handover` before they are restored."""
    eos: ExactlyOnce | None = exactly_once_of(self.app)
    mine = worker_transactional_id(self.app)
    producers = transaction_producers(self.app)
    active = self._tps_to_active_tpgs(assigned)
    if not active or any(tid != mine for tid in producers):
        async with eos.quiet() if eos is not None else contextlib.nullcontext():
            for tid in [tid for tid in producers if tid != mine or not active]:
                log.info("stopping transactional producer %s", tid)
                await self.producer.stop_transaction(tid)
    if not active:
        return
    if mine not in producers:
        await self.producer.begin_transaction(mine)
    if eos is not None:
        taken = self._tps_to_active_tpgs(newly_assigned)
        await eos.take_over({TopicPartition(tpg.topic, tpg.partition) for tpg in taken if tpg.topic in eos.inputs},
                            {tpg.partition for tpg in active if tpg.topic in eos.inputs})


async def _highwaters_from_broker(self: AIOKafkaConsumerThread, partitions: list[TP]) -> Any:
    consumer = self._ensure_consumer()
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.beginning_offsets(partitions)
    from faust.transport.drivers.aiokafka import server_list

    bootstrap = server_list(self.transport.url, self.transport.default_port)  # type: ignore[attr-defined]
    found = await _after_last_records(bootstrap, {tp: (starts[tp], ends[tp]) for tp in partitions})
    # Faust's recovery takes the value minus one as the last offset to reach: the commit marker
    # after the last committed record, where our stores' checkpoints point (`processors.open_transactions.Transaction`).
    return {tp: offset + 1 for tp, offset in found.items()}


def _remaining_but_the_marker(self: Recovery) -> Any:
    """Records left to restore per partition, the commit marker at the end not counted: Faust's
    recovery never receives it (and took two idle 5-second polls to notice)."""
    return _but_the_marker(_ORIGINALS["Recovery.active_remaining"](self))


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
    return _but_the_marker(_ORIGINALS["Recovery.standby_remaining"](self))


def _assignment_taking_over_warm(self: CopartitionedAssignor) -> Any:
    """Faust's assignment, except that a worker never takes a partition over cold.

    Faust gives a joining worker its share of active partitions at once, and the worker then
    restores them from their changelogs while they stop (541 s for half of 2,000,000 resources).
    As Kafka Streams does (KIP-441), a partition whose new owner held it neither active nor
    standby stays with its current owner, and the new one gets it as a standby; once its
    standbys are current it asks for another rebalance (`_ask_for_my_share_once_warm`), where
    it is warm and takes them."""
    before = {client: (set(a.actives), set(a.standbys)) for client, a in self._client_assignments.items()}
    result = _ORIGINALS["CopartitionedAssignor.get_assignment"](self)
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


def _ask_for_my_share_once_warm(app: AppT, eos: ExactlyOnce) -> None:
    """After a recovery that brought every standby to its changelog's end: a worker with fewer
    active partitions than its share asks for a rebalance, once per assignment (a sticky
    assignment that gives it none ends there), where it takes partitions it now holds warm."""
    assignor: Any = app.assignor  # Faust's CopartitionedAssignor (its type names the abstract one)
    actives = {tp.partition for tp in assignor.assigned_actives()}
    standbys = {tp.partition for tp in assignor.assigned_standbys()} - actives
    workers = len(set(assignor.changelog_distribution) | {str(app.conf.canonical_url)})
    held = (frozenset(actives), frozenset(standbys))
    if not standbys or len(actives) >= app.conf.topic_partitions // workers or held == eos.asked_holding:
        return
    eos.asked_holding = held
    log.info("standbys of partitions %s are current: asking for a rebalance to take my share", sorted(standbys))
    thread = _consumer_thread(app.consumer)
    consumer = thread._ensure_consumer()

    async def rejoin() -> None:
        consumer._coordinator.request_rejoin()

    asyncio.ensure_future(thread.cast_thread(rejoin))


_NOT_YET = 2**62  # an offset no changelog event has: Faust's recovery skips events at or below it


async def _build_offsets_after_bulk_restore(self: Recovery, consumer: Any, tps: set[TP], destination: Counter[TP],
                                            title: str) -> None:
    """Bring each partition of `tps` to its changelog's end in bulk (`processors.restore`), then
    let Faust's recovery start from there: it reads the few records that came since.

    While the bulk restore runs, Faust's recovery loop must not apply changelog events of the
    same partitions still queued from before the rebalance (an older value would land over a
    newer one): their offsets in `destination` are set past any event's until it ends."""
    eos: ExactlyOnce | None = exactly_once_of(self.app)
    if eos is None:
        return await _ORIGINALS["Recovery._build_offsets"](self, consumer, tps, destination, title)
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
            spans = {TopicPartition(tp.topic, tp.partition): (table, _or_none_read(before[tp]))
                     for tp, table in tables.items()}
            await eos.restorer.restore(spans)
        finally:
            for tp, table in tables.items():
                persisted = table.persisted_offset(tp)
                # Faust's counters of offsets hold None for "not known" (its `_build_offsets`).
                destination[tp] = before[tp] if persisted is None else persisted  # type: ignore[assignment]
    if is_standby:
        eos.standbys_restored = True
    await _ORIGINALS["Recovery._build_offsets"](self, consumer, tps, destination, title)




async def _wait_as_long_as_it_takes(self: Recovery, coro: Any, timeout: Any = None) -> None:
    """Faust's wait for a step of its recovery, without its timeout (`broker_request_timeout`,
    90 s). A step that outlived it did not fail: mode reports a timed-out wait as the service
    stopping, and the recovery loop ended for good, the worker processing nothing ever after. A
    restore in bulk of a large partition takes longer than that; broker requests in the steps
    keep their own timeouts, and a new rebalance still interrupts any step."""
    await _ORIGINALS["Recovery._wait"](self, coro, None)


def _verify_fetching_only(self: AIOKafkaConsumerThread, now: float, tp: TP) -> None:
    """Faust's liveness check of a partition, without its half about streams: that half reads
    the monitor's inbound times, which this app does not keep (`processors.app` removes the
    monitor from the per-event sensors), and takes a position short of the highwater for
    unprocessed records, when under exactly-once every idle partition ends in a commit marker.
    It logged every partition as stuck, at ERROR, several times a second from a worker's fifth
    minute on. The checks of fetch requests and responses stay."""
    self._verify_aiokafka_event_path(now, tp)


FETCH_MAX_WAIT_MS = 100


def _worker_consumer_answering_soon(self: AIOKafkaConsumerThread, transport: Any) -> AIOKafkaConsumer:
    """Faust's consumer, its long polls cut from 1.5 s to FETCH_MAX_WAIT_MS.

    The broker answers one connection's requests in order, and a fetch of partitions with
    nothing new waits out its whole long poll: every offset request of a recovery (earliest
    offsets, seeks, positions) queued behind one took ~1.5 s, four or five of them in a row at
    each rebalance, while the partitions being moved stood still. An idle worker now sends ten
    fetches a second instead of one; a fetch with records returns at once either way."""
    consumer = _ORIGINALS["AIOKafkaConsumerThread._create_worker_consumer"](self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
    return consumer


# Per (topic, partition): offset ranges [start, end) that a read_committed fetch of this process
# passed over without a record to hand on (transaction markers, aborted batches), newest last.
_PASSED_OVER: dict[tuple[str, int], deque[tuple[int, int]]] = {}
PASSED_OVER_KEPT = 1024  # ranges kept per partition; a hole older than those is read back


def _unpack_records_noting_passed_over(self: PartitionRecords) -> Iterator[Any]:
    """aiokafka's unpacking of one partition's fetched batches, noting the offsets it passes
    over without handing on a record (`passed_over`).

    Under exactly-once every upload ends in a transaction marker on each partition it wrote, so
    the worker's stream sees a hole in the offsets after nearly every ingest message, and
    `ExactlyOnce.in_order` read each hole back from Kafka (point 6 of `processors.transactions`)
    to make sure the stream had not skipped a committed record: about two fetches per 1000
    records, each holding up the agent for a round trip. The consumer that fetched the hole has
    seen what is in it; only a hole it did not pass over entirely is read back."""
    unpacked = _ORIGINALS["PartitionRecords._unpack_records"](self)
    if self._isolation_level != READ_COMMITTED:
        yield from unpacked
        return
    key = (self._tp.topic, self._tp.partition)
    ranges = _PASSED_OVER.get(key)
    if ranges is None:
        ranges = _PASSED_OVER.setdefault(key, deque(maxlen=PASSED_OVER_KEPT))
    last = self.next_fetch_offset  # the fetch's offset
    for record in unpacked:
        if record.offset > last:
            ranges.append((last, record.offset))
        last = record.offset + 1
        yield record
    if self.next_fetch_offset > last:  # the fetch ended in markers (or aborted batches)
        ranges.append((last, self.next_fetch_offset))


def passed_over(topic: str, partition: int, start: int, end: int) -> bool:
    """Whether this process's read_committed fetches passed over every offset of [start, end)
    of the partition without a committed record there (`_unpack_records_noting_passed_over`)."""
    ranges = _PASSED_OVER.get((topic, partition))
    if not ranges:
        return False
    covered = start
    # A copy made in one C call: the consumer's thread appends to the deque meanwhile.
    for low, high in sorted(r for r in tuple(ranges) if r[1] > start and r[0] < end):
        if low > covered:
            return False
        covered = max(covered, high)
        if covered >= end:
            return True
    return covered >= end


async def _perform_seek_knowing_where_each_partition_resumes(self: Consumer) -> None:
    eos: ExactlyOnce | None = exactly_once_of(self.app)
    if eos is None or not self.app.in_transaction:
        return await _ORIGINALS["Consumer.perform_seek"](self)
    epoch = eos.epoch
    await _ORIGINALS["Consumer.perform_seek"](self)  # asks the group for the committed offsets (and seeks)
    inputs = sorted(tp for tp in self.assignment() if tp.topic in eos.inputs)
    committed = {tp: committed_offset(self.app, tp) for tp in inputs}  # None: never, or 0
    never = [TopicPartition(tp.topic, tp.partition) for tp, offset in committed.items() if offset is None]
    thread = _consumer_thread(self)
    starts = await thread.call_thread(_log_starts, thread, never) if never else {}
    points = {tp: offset if offset is not None else starts[TopicPartition(tp.topic, tp.partition)]
              for tp, offset in committed.items()}
    eos.resume_from(epoch, points)


async def _seek_to_resume_points(app: AppT) -> None:
    """Move every input partition's fetch position to the next offset `in_order` expects.

    Called once a rebalance's recovery has resumed the streams: resuming clears the streams'
    queues, so records fetched before were dropped and Faust's own filter
    (`_read_offset`) would not let them through again; a seek back delivers them again
    (`in_order` skips the ones it has processed since).
    """
    eos: ExactlyOnce | None = exactly_once_of(app)
    if eos is None or not app.in_transaction:
        return
    points = eos.resume_points()
    if not points:
        return
    consumer: Any = app.consumer
    thread = _consumer_thread(consumer)
    await thread.call_thread(_seek_to, thread, points)
    for tp, offset in points.items():
        consumer._read_offset[tp] = offset or None


async def _on_recovery_completed_then_seek(self: Recovery, generation_id: int = 0) -> None:
    await _ORIGINALS["Recovery.on_recovery_completed"](self, generation_id)
    await _seek_to_resume_points(self.app)
    eos: ExactlyOnce | None = exactly_once_of(self.app)
    if eos is not None and eos.standbys_restored:
        _ask_for_my_share_once_warm(self.app, eos)


async def _resume_streams_then_seek(self: Recovery, generation_id: int = 0) -> None:
    await _ORIGINALS["Recovery._resume_streams"](self, generation_id)
    await _seek_to_resume_points(self.app)


def _pause_partitions_fetching_no_changelog(self: Consumer, tps: Iterable[TP]) -> None:
    """Faust's pause, which only stops handing a partition's records to the streams, and, for
    the tables' changelog partitions, aiokafka's too, which stops fetching them.

    Faust pauses the changelog partitions outside a recovery (and resumes them for one, and
    for standbys) in its own bookkeeping only, so aiokafka went on fetching each of them once:
    the first records a worker wrote to it after an assignment came back in a fetch and were
    never taken. And aiokafka sends no fetch to a broker for `prefetch_backoff` (0.1 s) after a
    response while records of it are untaken: each changelog partition's first write held up
    everything the worker was to read next by up to 100 ms — 3-5 of the first 10 of 40 single
    uploads after a start reached the worker 55-93 ms after their 202 (3 ms at p50), and in
    `make bench` the first releases, the first writes of the `waiters` table, 106-133 ms
    against 30-45 (the 202 to the order's batch terminal)."""
    tps = set(tps)
    _ORIGINALS["Consumer.pause_partitions"](self, tps)
    _fetch_changelogs(self, tps, fetch=False)


def _resume_partitions_fetching_changelog(self: Consumer, tps: Iterable[TP]) -> None:
    """Faust's resume, and for changelog partitions (a recovery, standbys) aiokafka's too: see
    `_pause_partitions_fetching_no_changelog`."""
    tps = set(tps)
    _ORIGINALS["Consumer.resume_partitions"](self, tps)
    _fetch_changelogs(self, tps, fetch=True)


def _fetch_changelogs(consumer: Consumer, tps: set[TP], fetch: bool) -> None:
    """Pause or resume aiokafka's fetching of the changelog partitions among `tps`, in the
    consumer's thread (where aiokafka runs), in the order asked; those no longer assigned
    when it runs are left alone (a rebalance began: a new assignment fetches afresh)."""
    changelogs = [TopicPartition(tp.topic, tp.partition) for tp in tps if consumer._is_changelog_tp(tp)]
    if not changelogs:
        return
    thread = _consumer_thread(consumer)

    def apply() -> None:
        client = thread._consumer
        if client is None:
            return  # not started: it fetches nothing yet
        assigned = client.assignment()
        mine = [tp for tp in changelogs if tp in assigned]
        if mine:
            (client.resume if fetch else client.pause)(*mine)

    with contextlib.suppress(RuntimeError):  # its loop closed: the consumer has stopped, fetching nothing
        thread.thread_loop.call_soon_threadsafe(apply)


async def _log_starts(thread: AIOKafkaConsumerThread, partitions: list[TopicPartition]) -> dict[Any, int]:
    """In the consumer's thread: the first offset of each of `partitions`."""
    return await thread._ensure_consumer().beginning_offsets(partitions)


async def _seek_to(thread: AIOKafkaConsumerThread, offsets: Mapping[TP, int]) -> None:
    """In the consumer's thread: move each partition's fetch position to its offset."""
    consumer = thread._ensure_consumer()
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        atp = TopicPartition(tp.topic, tp.partition)
        if atp in assigned:  # a rebalance may have begun since: those positions are reset anyway
            consumer.seek(atp, offset)


def faust_patches() -> list[tuple[type, str, Callable[..., Any]]]:
    """What `install_faust` replaces: (class, attribute, our version). Each replacement's
    docstring says the gap it closes; tests/test_faust_seam.py checks every name against the
    installed classes."""
    from faust.assignor.copartitioned_assignor import CopartitionedAssignor
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer, TransactionManager
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return [
        (Consumer, "_commit_tps", _commit_tps_between_events),
        (TransactionManager, "on_rebalance", _on_rebalance_with_one_producer),
        (TransactionManager, "on_partitions_revoked", _commit_before_revocation),
        (AIOKafkaConsumerThread, "_highwaters", _highwaters_from_broker),
        (Recovery, "active_remaining", _remaining_but_the_marker),
        (Recovery, "standby_remaining", _standby_remaining_but_the_marker),
        (CopartitionedAssignor, "get_assignment", _assignment_taking_over_warm),
        (Recovery, "_build_offsets", _build_offsets_after_bulk_restore),
        (Recovery, "_wait", _wait_as_long_as_it_takes),
        (AIOKafkaConsumerThread, "verify_event_path", _verify_fetching_only),
        (AIOKafkaConsumerThread, "_create_worker_consumer", _worker_consumer_answering_soon),
        (Recovery, "on_recovery_completed", _on_recovery_completed_then_seek),
        (Recovery, "_resume_streams", _resume_streams_then_seek),
        (Consumer, "perform_seek", _perform_seek_knowing_where_each_partition_resumes),
        (PartitionRecords, "_unpack_records", _unpack_records_noting_passed_over),
        (Consumer, "pause_partitions", _pause_partitions_fetching_no_changelog),
        (Consumer, "resume_partitions", _resume_partitions_fetching_changelog),
    ]


def original_of(owner: type, attribute: str) -> Callable[..., Any]:
    """What `owner.attribute` is without our replacement (before `install_faust`, or kept by it)."""
    return _ORIGINALS.get(f"{owner.__name__}.{attribute}") or getattr(owner, attribute)


def install_faust() -> None:
    """Put our replacements into Faust's classes, and aiokafka's (process-wide; once is enough).

    Refuses, with what it found, when faust-streaming, mode-streaming or aiokafka is not the
    version they were checked against: a renamed private attribute would otherwise not fail
    but quietly change what is committed."""
    require_checked()
    install_aiokafka()
    for owner, attribute, replacement in faust_patches():
        current = getattr(owner, attribute)
        if current is not replacement:
            _ORIGINALS[f"{owner.__name__}.{attribute}"] = current
            setattr(owner, attribute, replacement)
