"""The batch status table on disk (`state.batch_store`): counts once per record, details kept and
dropped, the tenant's list newest first by seek, and a reopened store that knows its position."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka import TopicPartition

from schemas.batch_events import (
    DELETE_BATCH,
    INGEST_BATCH,
    PATCH_BATCH,
    BatchMeta,
    IdempotencyClaim,
    claim_event,
    registration,
)
from state.batch_store import BatchStore
from state.bookkeeping import KeyEntry

TOPIC = "batch-events"


def _event(batch_id: str, accepted_at: int, outcomes: list[dict[str, Any]] | None = None, count: int = 3,
           tenant: str = "t1", batch_type: str | None = None) -> Any:
    body = {"type": "records" if outcomes else "batch", "batchId": batch_id, "partnerId": "p", "tenantId": tenant,
            "schemaDefinitionId": "s", "recordCount": count, "acceptedAt": accepted_at, "outcomes": outcomes or []}
    if batch_type:
        body["batchType"] = batch_type
    return SimpleNamespace(offset=0, key=batch_id.encode(), value=orjson.dumps(body))


def _fold(store: BatchStore, events: list[Any], position: int) -> None:
    store.apply_all({TopicPartition(TOPIC, 0): events}, {TopicPartition(TOPIC, 0): position})


def test_outcomes_count_once_and_details_follow_the_records(tmp_path: Path) -> None:
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store")
    pending = {"index": 1, "status": "pending", "at": 5, "externalId": "b", "missingDependencies": []}
    _fold(store, [_event("b1", 1), _event("b1", 1, [{"index": 0, "status": "created", "at": 2}, pending])], 2)
    batch = store.get("p", "t1", "b1")
    assert batch is not None and (batch.successful, batch.pending, batch.status) == (1, 1, "processing")
    assert list(batch.pending_details) == [1]

    _fold(store, [_event("b1", 1, [{"index": 0, "status": "failed", "at": 3},  # terminal already: ignored
                                   {"index": 1, "status": "created", "at": 6},
                                   {"index": 2, "status": "failed", "at": 7, "code": "VALIDATION_FAILED",
                                    "externalId": "c", "message": "bad"}])], 3)
    batch = store.get("p", "t1", "b1")
    assert batch is not None
    assert (batch.successful, batch.failed, batch.pending, batch.status) == (2, 1, 0, "partial_success")
    assert batch.pending_details == {}, "a resolved pending record is still listed"
    assert batch.details == {2: {"externalId": "c", "code": "VALIDATION_FAILED", "message": "bad"}}
    assert batch.summary == {"VALIDATION_FAILED": 1} and batch.completedAt == 7
    assert store.get("p", "other-tenant", "b1") is None
    store.store.close()


def test_the_tenant_list_pages_newest_first_and_the_store_reopens_where_it_was(tmp_path: Path) -> None:
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store")
    _fold(store, [_event(f"b{i:03d}", 1000 + i) for i in range(250)] + [_event("x", 5000, tenant="t2")], 251)
    store.add(BatchMeta("fresh", "p", "t1", "s", 1, 9000))  # accepted here, not yet read back
    store.add(BatchMeta("b000", "p", "t1", "s", 3, 1000))  # known already: not counted twice

    seen, after = [], None
    while True:
        page, total, has_next = store.page("p", "t1", after, 100)
        assert total == 251
        seen += [b.batchId for b in page]
        if not has_next:
            break
        after = page[-1].batchId
    assert seen == ["fresh", *(f"b{i:03d}" for i in reversed(range(250)))]
    store.store.close()

    again = BatchStore("unused:9092", TOPIC, tmp_path / "store")
    assert again.initial_positions() == {0: 251}
    assert again.page("p", "t2", None, 10)[0][0].batchId == "x"
    again.store.close()


def test_batches_past_their_retention_are_forgotten_whole(tmp_path: Path) -> None:
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store")
    failed = {"index": 0, "status": "failed", "at": 2, "code": "VALIDATION_FAILED", "message": "no"}
    pending = {"index": 1, "status": "pending", "at": 2, "externalId": "b", "missingDependencies": []}
    _fold(store, [_event("old1", 100, [failed, pending]), _event("old2", 200), _event("new", 5000)], 3)
    _fold(store, [_event("other", 150, tenant="t2")], 4)

    assert store.expire(accepted_before_ms=1000, chunk=2) == 2  # the two oldest: old1, then other
    assert store.expire(accepted_before_ms=1000) == 1
    assert store.expire(accepted_before_ms=1000) == 0

    assert [store.get("p", "t1", b) is None for b in ("old1", "old2", "new")] == [True, True, False]
    assert store.get("p", "t2", "other") is None
    page, total, more = store.page("p", "t1", None, 10)
    assert ([b.batchId for b in page], total, more) == (["new"], 1, False)
    assert store.page("p", "t2", None, 10)[:2] == ([], 0)
    left = [key for key, _ in store.store.items_from(b"", b"") if b"old" in key or b"other" in key]
    assert left == [], f"keys of forgotten batches left behind: {left}"
    assert store.store.positions() == {0: 4}  # expiring does not move the topic position


def test_lists_filtered_by_type_and_status_page_by_seek_and_follow_status_changes(tmp_path: Path) -> None:
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store")
    kinds = [INGEST_BATCH, PATCH_BATCH, DELETE_BATCH]
    _fold(store, [_event(f"b{i:03d}", 1000 + i, count=1, batch_type=kinds[i % 3]) for i in range(90)], 90)
    done = {"index": 0, "status": "created", "at": 5}
    failed = {"index": 0, "status": "failed", "at": 5, "code": "NOT_FOUND", "message": "no"}
    # Every patch batch ends: even-numbered ones succeed, odd ones fail.
    _fold(store, [_event(f"b{i:03d}", 1000 + i, [done if i % 2 == 0 else failed], count=1)
                  for i in range(1, 90, 3)], 120)

    def every(batch_type: str | None, status: str | None) -> tuple[list[str], int]:
        seen, after, totals = [], None, set()
        while True:
            page, total, has_next = store.page("p", "t1", after, 7, batch_type, status)
            seen += [b.batchId for b in page]
            totals.add(total)
            if not has_next:
                return seen, totals.pop() if len(totals) == 1 else -1
            after = page[-1].batchId

    patches = [f"b{i:03d}" for i in reversed(range(1, 90, 3))]
    assert every(PATCH_BATCH, None) == (patches, 30)
    assert every(None, "queued") == ([f"b{i:03d}" for i in reversed(range(90)) if i % 3 != 1], 60)
    succeeded = [b for b in patches if int(b[1:]) % 2 == 0]
    assert every(PATCH_BATCH, "success") == (succeeded, 15)
    assert every(None, "failed") == ([b for b in patches if b not in succeeded], 15)
    assert every(DELETE_BATCH, "success") == ([], 0)
    assert every(None, None)[1] == 90
    assert store.get("p", "t1", "b001").batchType == PATCH_BATCH  # type: ignore[union-attr]

    assert store.expire(accepted_before_ms=1045) == 45
    assert every(PATCH_BATCH, "success")[1] == len([b for b in succeeded if int(b[1:]) >= 45])
    assert every(None, None)[1] == 45
    store.store.close()


def _claim_event(key: str, claimant: str, at: int, kind: str = "claim", tenant: str = "t1") -> Any:
    claim = IdempotencyClaim("p", tenant, key, f"print-{claimant}", claimant, at)
    return SimpleNamespace(offset=0, key=b"k", value=claim_event(claim, released=kind == "release"))


def _taken(key: str, claimant: str, at: int, batch_id: str) -> Any:
    claim = IdempotencyClaim("p", "t1", key, f"print-{claimant}", claimant, at)
    return SimpleNamespace(offset=0, key=batch_id.encode(),
                           value=registration(BatchMeta(batch_id, "p", "t1", "s", 1, at + 5), claim))


def _entry(store: BatchStore, key: str) -> KeyEntry:
    """Tenant t1's entry of an idempotency key, which the test expects to exist."""
    entry = store.key_entry("p", "t1", key)
    assert entry is not None, f"no entry for {key}"
    return entry


def test_idempotency_keys_go_to_the_first_claim_are_taken_by_a_batch_and_expire(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store", idempotency_ttl_s=3600, claim_stale_s=30)
    _fold(store, [_claim_event("k1", "a", now), _claim_event("k1", "b", now + 10)], 2)
    assert _entry(store, "k1")["claimant"] == "a", "the first claim holds the key"
    assert store.key_entry("p", "t2", "k1") is None, "keys are the tenant's"

    _fold(store, [_claim_event("k1", "b", now + 20, "release")], 3)  # not b's to release
    assert _entry(store, "k1")["claimant"] == "a"
    _fold(store, [_claim_event("k1", "a", now + 30, "release"), _claim_event("k1", "b", now + 40)], 5)
    assert _entry(store, "k1")["claimant"] == "b", "released: the next claim holds it"

    _fold(store, [_claim_event("k1", "c", now + 40 + 30_000)], 6)  # b's claim is stale by then
    assert _entry(store, "k1")["claimant"] == "c"
    _fold(store, [_taken("k1", "c", now + 40 + 30_000, "batch-c"),
                  _claim_event("k1", "d", now + 3_000_000)], 8)  # taken: no claim moves it within the TTL
    entry = _entry(store, "k1")
    assert entry["claimant"] == "c" and (entry["batch"] or {}).get("batchId") == "batch-c", entry

    # A batch whose claim this store never saw (another partition, read later) takes the key too.
    _fold(store, [_taken("k2", "e", now, "batch-e")], 9)
    assert (_entry(store, "k2")["batch"] or {}).get("batchId") == "batch-e"

    assert store.expire_keys(now + 1) == 1  # k2's entry (claimed at `now`); k1's is younger
    assert store.key_entry("p", "t1", "k2") is None and store.key_entry("p", "t1", "k1") is not None
    assert store.expire_keys(now + 10**9) == 1 and store.key_entry("p", "t1", "k1") is None
    assert list(store.store.items_from(b"j", b"j")) == [] and list(store.store.items_from(b"i", b"i")) == []
    store.store.close()


def test_backlog_batches_in_flight_and_quota_time_follow_registrations_outcomes_and_expiry(tmp_path: Path) -> None:
    store = BatchStore("unused:9092", TOPIC, tmp_path / "store",
                       record_spacing_ms=lambda partner: 100.0 if partner == "p" else None)
    _fold(store, [_event("b1", 1000, count=3), _event("b2", 1000, count=2),
                  _event("b3", 1000, count=4, tenant="t2")], 3)
    assert store.backlog() == 9 and store.in_flight("p", "t1") == 2 and store.in_flight("p", "t2") == 1
    # The quota's time: from the first acceptance on, 100 ms per record of the tenant's batches.
    assert store.arrival("p", "t1") == 1000 + 5 * 100 and store.arrival("p", "t2") == 1000 + 4 * 100

    pending = {"index": 1, "status": "pending", "at": 5, "externalId": "b", "missingDependencies": []}
    _fold(store, [_event("b1", 1000, [{"index": 0, "status": "created", "at": 2}, pending])], 4)
    assert store.backlog() == 7, "a record waiting for a reference was taken by a worker: not backlog"
    _fold(store, [_event("b1", 1000, [{"index": 1, "status": "created", "at": 6},  # pending -> applied
                                      {"index": 2, "status": "failed", "at": 7, "code": "X"},
                                      {"index": 2, "status": "created", "at": 8}])], 5)  # a duplicate
    assert store.backlog() == 6 and store.in_flight("p", "t1") == 1
    store.add(BatchMeta("b4", "p", "t1", "s", 10, 5000))  # accepted here: counted at once, once
    _fold(store, [_event("b4", 5000, count=10)], 6)
    assert store.backlog() == 16 and store.in_flight("p", "t1") == 2
    assert store.arrival("p", "t1") == 5000 + 10 * 100, "a gap refills the quota; b4 counted once"

    assert store.expire(accepted_before_ms=2000) == 3
    assert store.backlog() == 10 and store.in_flight("p", "t1") == 1 and store.outcomes_total() == 0
    store.store.close()
