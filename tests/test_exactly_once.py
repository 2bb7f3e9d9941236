"""Exactly-once effects: workers killed with SIGKILL mid-load, restarted, or replaced by another.

After each run, three things must be exactly what the accepted records imply:
- every batch's counts and error summary;
- every resource's data (merges applied once each, in order), and which resources exist;
- the outcome messages on the batch-events topic: exactly one committed outcome per record.

The load mixes uploads, creations, patches, deletes and a cascade delete, and events direct
producers wrote to other partitions than their resources' (handed on by the worker that reads
them: merges in order, creations round-robin and in one message); where the order of
two partitions decides an outcome (an item whose holder a cascade deletes: created then deleted
by the cascade, or failed), the check allows either and asserts the state both must end in.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from starlette.testclient import TestClient

from reach.config import Settings
from schemas.events import build_ingest_batch
from tests.support import (
    PlacedMessage,
    ServiceProcess,
    bearer,
    committed_outcomes,
    explained_by,
    free_port,
    partner_token,
    produce_placed,
    ready_generation,
    tenant_token,
    wait_terminal,
    wait_until,
)
from topics import service_topics
from topics.partitioning import partition_for

SCHEMA = {
    "name": "Account", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "round": {"type": "integer"},
        "history": {"type": "object", "additionalProperties": {"type": "integer"}},
        "score": {"type": "integer", "maximum": 1000},
    }},
}
HOLDER = {"name": "Holder", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "v": {"type": "integer"}}}}
ITEM = {"name": "Item", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "holder": {"$ref": "reach:schemas/Holder"}, "v": {"type": "integer"}}}}
HOLDERS, ITEMS = 100, 200  # item i references holder i % HOLDERS
IDS = 400          # resources updated by every upsert batch
UPSERT_ROUNDS = 6  # batches of IDS upserts each
REJECT_BATCHES = 4  # batches of fresh creations with onconflict=reject
REJECT_SIZE = 250


def _upsert_batch(round_: int) -> list[dict]:
    # Every record merges into the same resources: a record applied twice or out of order
    # leaves a visible trace in `round` (last writer) or `history` (one key per round).
    records = [{"id": f"a{i}", "name": f"acct {i}", "round": round_, "history": {f"r{round_}": i}}
               for i in range(IDS)]
    # Two records per round create without `name`: they fail at the worker, a7 and a11 never exist.
    records[7] = {"id": "a7", "score": round_}
    records[11] = {"id": "a11", "score": round_}
    return records


def _expected_data(i: int) -> dict:
    return {"id": f"a{i}", "name": f"acct {i}", "round": UPSERT_ROUNDS - 1,
            "history": {f"r{r}": i for r in range(UPSERT_ROUNDS)}}


@dataclass(frozen=True)
class Expect:
    """What a batch must end with: its records, and how many succeed with which failures
    (None: decided by a race the load allows)."""

    total: int
    successful: int | None = None
    summary: dict[str, int] | None = None
    direct: bool = False  # written straight to the ingest topic: unknown until a worker takes a record


Upload = tuple[str, str, dict, Expect]  # method, path and query, body, what it must end with
Expected = dict[str, Expect]  # batchId -> what it must end with


def _mixed_load() -> list[Upload]:
    """Holders, items naming them, patches, deletes and a cascade: holders 0-49 end deleted by
    the cascade with their items, holders 50-99 patched, their items deleted by id."""
    kept = [{"id": f"i{i}", "holder": f"h{i % HOLDERS}"} for i in range(ITEMS) if i % HOLDERS >= HOLDERS // 2]
    doomed = [{"id": f"i{i}", "holder": f"h{i % HOLDERS}"} for i in range(ITEMS) if i % HOLDERS < HOLDERS // 2]
    return [
        ("POST", "/api/resources/holder/batch", {"resources": [{"id": f"h{j}", "name": "H"} for j in range(HOLDERS)]},
         Expect(HOLDERS, HOLDERS, {})),
        # They may wait out a worker's restart for their holders: each is created.
        ("POST", "/api/resources/item/batch?dependencyWaitTimeout=300", {"resources": kept},
         Expect(len(kept), len(kept), {})),
        # An item of a holder the cascade deletes first fails when its short wait ends; otherwise
        # it is created, and then deleted by the cascade.
        ("POST", "/api/resources/item/batch?dependencyWaitTimeout=3", {"resources": doomed}, Expect(len(doomed))),
        ("PATCH", "/api/resources/holder/batch", {"resources": [{"id": f"h{j}", "v": 1} for j in range(HOLDERS)]},
         Expect(HOLDERS, HOLDERS, {})),
        ("DELETE", "/api/resources/item/batch", {"externalIds": [item["id"] for item in kept]},
         Expect(len(kept), len(kept), {})),
        ("DELETE", "/api/resources/holder/batch", {"externalIds": [f"h{j}" for j in range(HOLDERS // 2)],
                                                   "cascade": True}, Expect(HOLDERS // 2, HOLDERS // 2, {})),
    ]


def _load() -> list[Upload]:
    """Every batch of the load, in upload order, with what each must end with."""
    accounts: list[Upload] = [("POST", "/api/resources/account/batch", {"resources": _upsert_batch(round_)},
                               Expect(IDS, IDS - 2, {"VALIDATION_FAILED": 2})) for round_ in range(UPSERT_ROUNDS)]
    creations: list[Upload] = [("POST", "/api/resources/account/batch?onconflict=reject",
                                {"resources": [{"id": f"new-{b}-{i}", "name": "fresh"} for i in range(REJECT_SIZE)]},
                                Expect(REJECT_SIZE, REJECT_SIZE, {})) for b in range(REJECT_BATCHES)]
    mixed = _mixed_load()
    # Two account batches first (the kill tests wait for them to start), then the rest interleaved.
    return [*accounts[:2], *mixed[:3], accounts[2], mixed[3], accounts[3], mixed[4], accounts[4], mixed[5],
            accounts[5], *creations]


MISPLACED_IDS, MISPLACED_ROUNDS = 100, 3  # merged into m<i> by a producer with a partitioner of its own
ROUND_ROBIN, MIXED = 200, 100  # fresh creations (onconflict=reject) placed round-robin, and in one message


def _produce_misplaced(settings: Settings, definition_id: str, expected: Expected) -> None:
    """Direct producers whose events are not on their owner partitions (`processors.hand_on`):
    upserts merging into the same resources, every round on the partition after each message's
    owner (a deterministic partitioner other than murmur2: their order must hold); creations
    round-robin, one message each; creations all in one message (split by owner)."""
    partitions = service_topics(settings).ingest.partitions
    rounds = [build_ingest_batch("partner-a", "tenant-1", definition_id, [
        (f"m{i}", {"id": f"m{i}", "name": f"moved {i}", "round": r, "history": {f"r{r}": i}})
        for i in range(MISPLACED_IDS)], partitions=partitions) for r in range(MISPLACED_ROUNDS)]
    round_robin = build_ingest_batch("partner-a", "tenant-1", definition_id, [
        (f"rr{i}", {"id": f"rr{i}", "name": "fresh"}) for i in range(ROUND_ROBIN)], op="reject")
    mixed = build_ingest_batch("partner-a", "tenant-1", definition_id, [
        (f"mx{i}", {"id": f"mx{i}", "name": "fresh"}) for i in range(MIXED)], op="reject", partitions=1)
    messages: list[PlacedMessage] = [(key, value, headers, (partition_for(key, partitions) + 1) % partitions)
                for batch in rounds for key, value, headers in batch.messages]
    messages += [(key, value, headers, n % partitions) for n, (key, value, headers) in enumerate(round_robin.messages)]
    messages += [(key, value, headers, 0) for key, value, headers in mixed.messages]

    asyncio.run(produce_placed(settings, messages))
    for batch in rounds:
        expected[batch.batch_id] = Expect(MISPLACED_IDS, MISPLACED_IDS, {}, direct=True)
    expected[round_robin.batch_id] = Expect(ROUND_ROBIN, ROUND_ROBIN, {}, direct=True)
    expected[mixed.batch_id] = Expect(MIXED, MIXED, {}, direct=True)


def _upload(client: TestClient, headers: dict[str, str], uploads: list[Upload], expected: Expected) -> None:
    """Send each batch; record its batchId -> what it must end with in `expected`."""
    for method, path, body, outcome in uploads:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 202, response.text
        expected[response.json()["data"]["batchId"]] = outcome


def _upload_load(client: TestClient, tenant_headers: dict[str, str]) -> Expected:
    """Send every batch of the load; return batchId -> what it must end with."""
    expected: Expected = {}
    _upload(client, tenant_headers, _load(), expected)
    return expected


def _upload_and_kill_mid_load(client: TestClient, headers: dict[str, str], victim: ServiceProcess,
                              expected: Expected, uploads: list[Upload] | None = None,
                              misplaced: tuple[Settings, str] | None = None) -> int:
    """Upload the load and SIGKILL `victim` while the workers are busy with it; return the
    records processed at the kill. `misplaced` (settings, Account's definition id): direct
    producers' misplaced events join the load (`_produce_misplaced`).

    The first two batches go first; once the workers are visibly processing, the others
    follow back to back and the kill comes right after the last one is accepted. The workers
    are then in the middle of the load whatever their speed (a kill at a fraction of a load
    uploaded in advance raced a worker that does all of it in half a second).
    """
    uploads = uploads or _load()
    _upload(client, headers, uploads[:2], expected)
    wait_until(lambda: _progress(client, headers, list(expected)) > 0, 90, 0.02,
               what="the workers to start on the load", seen=lambda: _progress(client, headers, list(expected)))
    if misplaced is not None:
        _produce_misplaced(*misplaced, expected)
    _upload(client, headers, uploads[2:], expected)
    victim.stop(signal.SIGKILL)
    done_at_kill = _progress(client, headers, list(expected))
    total = sum(e.total for e in expected.values())
    assert done_at_kill < total, "the workers finished the load before the kill; the test proves nothing"
    return done_at_kill


def _check_results(client: TestClient, tenant_headers: dict[str, str], expected: Expected, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for batch_id, expect in expected.items():
        try:
            if expect.direct:
                wait_until(lambda: client.get(f"/api/batches/{batch_id}", headers=tenant_headers).status_code == 200,
                           max(deadline - time.monotonic(), 1), 0.1, what=f"direct batch {batch_id} to be known")
            data = wait_terminal(client, batch_id, tenant_headers, max(deadline - time.monotonic(), 1))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nevery batch: {_batches_progress(client, tenant_headers, expected)}") from None
        progress = data["progress"]
        assert progress["processedRecords"] == progress["totalRecords"] == expect.total, (batch_id, progress)
        assert progress["pendingRecords"] == 0, (batch_id, progress)
        if expect.successful is not None:
            assert (progress["successfulRecords"], progress["failedRecords"]) == \
                (expect.successful, expect.total - expect.successful), (batch_id, progress, data["errors"])
            assert data["errors"]["summary"] == expect.summary, (batch_id, data["errors"])
    for i in range(IDS):
        response = client.get(f"/api/resources/account/a{i}", headers=tenant_headers)
        if i in (7, 11):
            # Created by no record: round 0's record lacks `name`, later ones break `score`.
            assert response.status_code == 404, response.text
            continue
        assert response.status_code == 200, response.text
        assert response.json()["data"]["result"]["data"] == _expected_data(i), i
    misplaced = any(e.direct for e in expected.values())
    if misplaced:
        wrong = {}
        for i in range(MISPLACED_IDS):  # every round merged once, in the order sent
            got = client.get(f"/api/resources/account/m{i}", headers=tenant_headers).json()["data"]["result"]["data"]
            if got != {"id": f"m{i}", "name": f"moved {i}", "round": MISPLACED_ROUNDS - 1,
                       "history": {f"r{r}": i for r in range(MISPLACED_ROUNDS)}}:
                wrong[f"m{i}"] = got
        assert not wrong, f"{len(wrong)} handed-on merges not applied once each in order: {list(wrong.items())[:3]}"
    total = client.get("/api/resources/account?limit=1", headers=tenant_headers).json()["data"]["pagination"]["total"]
    assert total == IDS - 2 + REJECT_BATCHES * REJECT_SIZE + (MISPLACED_IDS + ROUND_ROBIN + MIXED) * misplaced
    _check_mixed_state(client, tenant_headers)


def _check_mixed_state(client: TestClient, headers: dict[str, str]) -> None:
    """Holders 0-49 deleted by the cascade, 50-99 patched once; no item left (cascaded, failed or deleted)."""
    wrong = {}
    for j in range(HOLDERS):
        response = client.get(f"/api/resources/holder/h{j}", headers=headers)
        want = None if j < HOLDERS // 2 else {"id": f"h{j}", "name": "H", "v": 1}
        got = response.json()["data"]["result"]["data"] if response.status_code == 200 else None
        if got != want:
            wrong[f"h{j}"] = got
    for i in range(ITEMS):
        response = client.get(f"/api/resources/item/i{i}", headers=headers)
        if response.status_code != 404:
            wrong[f"i{i}"] = response.json()
    assert not wrong, f"{len(wrong)} resources not as the writes imply: {dict(list(wrong.items())[:5])}"
    totals = [client.get(f"/api/resources/{s}?limit=1", headers=headers).json()["data"]["pagination"]["total"]
              for s in ("holder", "item")]
    assert totals == [HOLDERS // 2, 0], totals


def _assert_exactly_one_outcome_each(settings: Settings, expected: Expected) -> None:
    counts = asyncio.run(committed_outcomes(settings))
    want = {(b, i) for b, e in expected.items() for i in range(e.total)}
    assert set(counts) == want
    duplicated = {k: n for k, n in counts.items() if n != 1}
    assert not duplicated, f"{len(duplicated)} records have more than one committed outcome"


def _define_schema(client: TestClient) -> str:
    """Define Account, Holder and Item; Account's definition id."""
    ids = []
    for definition in (SCHEMA, HOLDER, ITEM):
        response = client.post("/partner/schema-definitions", json=definition, headers=bearer(partner_token()))
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["id"])
    return ids[0]


def _batches_progress(client: TestClient, headers: dict[str, str], batch_ids: Iterable[str]) -> list[str]:
    """Each batch's status and processed / total records, for failure messages."""
    seen = []
    for batch_id in batch_ids:
        data = client.get(f"/api/batches/{batch_id}", headers=headers).json()["data"]
        seen.append(f"{batch_id[:8]} {data['status']} {data['progress']['processedRecords']}/"
                    f"{data['progress']['totalRecords']}")
    return seen


def _progress(client: TestClient, headers: dict[str, str], batch_ids: list[str]) -> int:
    """Records processed of `batch_ids` (a direct batch no worker has taken a record of is 404: none)."""
    answers = [client.get(f"/api/batches/{b}", headers=headers) for b in batch_ids]
    return sum(a.json()["data"]["progress"]["processedRecords"] for a in answers if a.status_code == 200)


def test_worker_killed_mid_load_and_restarted_applies_every_record_exactly_once(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    headers = bearer(tenant_token())
    account = _define_schema(ingress)
    expected: Expected = {}
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w1.log").start()
    with explained_by(worker):
        _upload_and_kill_mid_load(ingress, headers, worker, expected, misplaced=(settings, account))
    restarted = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w2.log").start()
    try:
        with explained_by(worker, restarted):
            _check_results(ingress, headers, expected, timeout_s=120)
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]
    restore = _restore_of_resources(restarted.log())
    replayed = sum(highwater - start for start, highwater in restore.values())
    stored = sum(highwater + 1 for _, highwater in restore.values())
    # The killed worker's stores kept what its committed transactions wrote: the restart
    # replays the changelog from there, not from the beginning (before: every store rebuilt).
    assert any(start > 0 for start, _ in restore.values()) and replayed < stored, \
        f"the restarted worker replayed {replayed} of {stored} changelog records: {restore}"
    _assert_exactly_one_outcome_each(settings, expected)


def _restore_of_resources(log: str) -> dict[int, tuple[int, int]]:
    """Per partition of the resources changelog: (offset the restore began at, highwater), from
    the tables Faust logs at the restarted worker's first recovery."""
    def table(title: str) -> dict[int, int]:
        found, topic = {}, ""
        for row in log[log.index(title):].splitlines()[1:]:
            if row.startswith("["):  # the next log line: the table ended
                break
            cells = [c.strip() for c in row.strip("|").split("|")]
            if len(cells) != 3 or not cells[1].isdigit():
                continue
            topic = topic if cells[0] == "〃" else cells[0]
            if topic.endswith(".resources"):
                found[int(cells[1])] = int(cells[2])
        return found

    starts, highwaters = table("Reading Starts At - Active"), table("Highwater - Active")
    # A restore in bulk (`processors.restore`) ran first where there was anything to read: Faust's
    # recovery then starts where it ended, and the restore began where the store was.
    bulk: dict[int, int] = {}
    for line in log[:log.index("Reading Starts At - Active")].splitlines():
        if "restoring " in line and ".resources[" in line:  # the first pass's start is the store's
            partition = int(line.split(".resources[", 1)[1].split("]", 1)[0])
            bulk.setdefault(partition, int(line.split(" from offset ", 1)[1].split()[0]))
    return {p: (bulk.get(p, starts[p]), highwaters[p]) for p in sorted(starts)}


def test_worker_killed_mid_creation_keeps_no_change_of_the_transaction_it_aborted(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    """Creations with onconflict=reject expose a store that kept what the kill aborted: processed
    again after the restart, those records would find their resources already there and fail."""
    headers = bearer(tenant_token())
    _define_schema(ingress)
    size, batches = 250, 12
    uploads: list[Upload] = [("POST", "/api/resources/account/batch?onconflict=reject",
                              {"resources": [{"id": f"c{b}-{i}", "name": "fresh"} for i in range(size)]},
                              Expect(size, size, {})) for b in range(batches)]
    expected: Expected = {}
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w1.log").start()
    with explained_by(worker):
        _upload_and_kill_mid_load(ingress, headers, worker, expected, uploads)
    restarted = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w2.log").start()
    try:
        with explained_by(worker, restarted):
            for batch_id in expected:
                progress = wait_terminal(ingress, batch_id, headers, 120)["progress"]
                assert (progress["successfulRecords"], progress["failedRecords"]) == (size, 0), \
                    f"batch {batch_id}: {progress}; every batch: {_batches_progress(ingress, headers, expected)}"
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]
    total = ingress.get("/api/resources/account?limit=1", headers=headers).json()["data"]["pagination"]["total"]
    assert total == size * batches
    _assert_exactly_one_outcome_each(settings, expected)


def test_two_workers_share_the_load_and_one_finishes_after_the_other_is_killed(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    headers = bearer(tenant_token())
    account = _define_schema(ingress)
    first = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w1.log").start()
    second_settings = replace(settings, worker_web_port=free_port())
    second = ServiceProcess(["-m", "processors.worker"], second_settings, tmp_path / "w2.log").start()
    expected: Expected = {}
    try:
        with explained_by(first, second):
            # Both own partitions before the load starts, so that the kill takes work away.
            wait_until(lambda: None is not ready_generation(first) == ready_generation(second), 90, 0.1,
                       what="both workers ready with ingest partitions of one generation",
                       seen=lambda: f"generations {ready_generation(first)} and {ready_generation(second)}")
            _upload_and_kill_mid_load(ingress, headers, second, expected, misplaced=(settings, account))
            _check_results(ingress, headers, expected, timeout_s=180)
    finally:
        assert first.stop() == 0, first.log()[-3000:]
    _assert_exactly_one_outcome_each(settings, expected)
