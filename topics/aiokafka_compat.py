"""aiokafka's transactional producer, asking again sooner while its coordinator is busy.

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

`install()` shortens only these waits: after CONCURRENT_TRANSACTIONS always; after
NOT_ENOUGH_REPLICAS to a transactional produce once per record batch, and after
COORDINATOR_NOT_AVAILABLE or COORDINATOR_LOAD_IN_PROGRESS to TxnOffsetCommit once until the
producer's next offset commit succeeds (a second one may be a real shortage of replicas or a
coordinator that moved, and waits the usual backoff). It wraps `handle_response` of
aiokafka's private request handlers; `tests/test_aiokafka_compat.py` checks those names and
shapes against the installed aiokafka.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    NotEnoughReplicasError,
)
from aiokafka.producer import sender

SOON_S = 0.005  # how long to wait before asking again instead
# The aiokafka these replacements (and every private aiokafka name the worker reads) were
# checked against; pyproject.toml pins it.
CHECKED_VERSIONS = {"aiokafka": "0.14.0"}
_INSTALLED = "_reach_asks_again_sooner"
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


def require_checked(more: Mapping[str, str] | None = None) -> None:
    """Raise RuntimeError unless aiokafka (and each of `more`: distribution -> version) is the
    version our use of its private names was checked against."""
    wanted = {**CHECKED_VERSIONS, **(more or {})}
    installed = {name: _installed(name) for name in wanted}
    wrong = {name: found for name, found in installed.items() if found != wanted[name]}
    if wrong:
        found = ", ".join(f"{name} {wrong[name]} (checked: {wanted[name]})" for name in sorted(wrong))
        raise RuntimeError(f"refusing to start on {found}: this service replaces and reads private parts of "
                           "these libraries, checked for the versions pyproject.toml pins (tests/test_faust_seam.py, "
                           "tests/test_aiokafka_compat.py); install those versions, or check the new ones first")


def install() -> None:
    """Make aiokafka's producers ask again sooner while a transaction coordinator is busy
    (process-wide; calling it again changes nothing). Refuses an aiokafka it was not checked
    against (`require_checked`)."""
    require_checked()
    for handler, concurrent in ((sender.AddPartitionsToTxnHandler, _partitions_concurrent),
                                (sender.AddOffsetsToTxnHandler, _offsets_concurrent)):
        if not getattr(handler.handle_response, _INSTALLED, False):
            handler.handle_response = _sooner(handler.handle_response, concurrent)  # type: ignore[method-assign]
    offsets = sender.TxnOffsetCommitHandler
    if not getattr(offsets.handle_response, _INSTALLED, False):
        offsets.handle_response = _offset_commit_sooner(offsets.handle_response)  # type: ignore[method-assign]
    produce = sender.SendProduceReqHandler
    if not getattr(produce.handle_response, _INSTALLED, False):
        produce.handle_response = _produce_sooner(produce.handle_response)  # type: ignore[method-assign]
