"""References between resources and pending records (docs/api.md §3 "References", §4 "References"
and "A record that arrives behind a pending record...", §5 pendingRecords / pendingResources),
with real worker processes on the session's broker."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.testclient import TestClient

from processors.grouped import items_of
from reach.config import Settings
from schemas.events import resource_key
from tests.support import (
    TERMINAL,
    ServiceProcess,
    bearer,
    committed_records,
    explained_by,
    free_port,
    ingress_context,
    partner_token,
    ready_generation,
    tenant_token,
    wait_terminal,
    wait_until,
    wait_worker_ready,
)
from topics import service_topics
from topics.partitioning import partition_for

DEFINITIONS = "/partner/schema-definitions"
LONG_WAIT = "300"  # a dependencyWaitTimeout that never passes during a test


# --- local helpers -----------------------------------------------------------------------

def tenant_headers() -> dict[str, str]:
    return bearer(tenant_token("partner-a", "tenant-1"))


def define(client: TestClient, name: str, properties: dict[str, Any], required: list[str]) -> str:
    """Create a definition with externalIdField `id`; return its id."""
    body = {"name": name, "externalIdField": "id",
            "schema": {"type": "object", "properties": {"id": {"type": "string"}, **properties},
                       "required": ["id", *required]}}
    response = client.post(DEFINITIONS, json=body, headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def ref(schema: str) -> dict[str, str]:
    return {"$ref": f"reach:schemas/{schema}"}


def define_shop(client: TestClient) -> dict[str, str]:
    """Customer, Product and Order (Order.customer → Customer, Order.products → [Product])."""
    return {
        "Customer": define(client, "Customer", {"name": {"type": "string"}}, ["name"]),
        "Product": define(client, "Product", {"title": {"type": "string"}}, []),
        "Order": define(client, "Order", {
            "customer": ref("Customer"),
            "products": {"type": "array", "items": ref("Product")},
            "n": {"type": "integer"},
            "note": {"type": "string"},
        }, []),
    }


def submit(client: TestClient, schema: str, resources: list[dict[str, Any]], **query: str) -> str:
    """Upload; assert 202; return the batch id."""
    response = client.post(f"/api/resources/{schema}/batch", json={"resources": resources}, params=query,
                           headers=tenant_headers())
    assert response.status_code == 202, response.text
    return response.json()["data"]["batchId"]


def run_batch(client: TestClient, schema: str, resources: list[dict[str, Any]], **query: str) -> dict[str, Any]:
    return wait_terminal(client, submit(client, schema, resources, **query), tenant_headers())


def get_batch(client: TestClient, batch_id: str, details: bool = False) -> dict[str, Any]:
    params = {"includePendingDetails": "true"} if details else {}
    response = client.get(f"/api/batches/{batch_id}", params=params, headers=tenant_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_pending(client: TestClient, batch_id: str, count: int = 1, timeout_s: float = 60) -> dict[str, Any]:
    """Wait until `count` records of the batch are pending; return it with pending details."""
    def probe() -> dict[str, Any] | None:
        batch = get_batch(client, batch_id, details=True)
        assert batch["status"] not in TERMINAL, batch
        return batch if batch["progress"]["pendingRecords"] == count else None

    return wait_until(probe, timeout_s, 0.05, what=f"{count} pending record(s) in batch {batch_id}")


def read(client: TestClient, schema: str, external_id: str) -> Any:
    """The resource (its JSON), or None when there is none."""
    response = client.get(f"/api/resources/{schema}/{external_id}", headers=tenant_headers())
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def missing_of(pending_resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((d["schemaDefinitionId"], d["schemaName"], d["externalId"])
                  for d in pending_resource["missingDependencies"])


def assert_pending_only(batch: dict[str, Any], pending: int) -> None:
    """Not terminal; `pending` records pending and none processed yet."""
    assert batch["status"] == "processing", batch
    progress = batch["progress"]
    assert progress["pendingRecords"] == pending, batch
    assert progress["processedRecords"] == 0 and progress["successfulRecords"] == 0, batch
    assert progress["failedRecords"] == 0, batch
    assert batch["completedAt"] is None, batch


def assert_all_succeeded(batch: dict[str, Any]) -> None:
    progress = batch["progress"]
    assert batch["status"] == "success", batch
    assert progress["successfulRecords"] == progress["totalRecords"] == progress["processedRecords"], batch
    assert progress["pendingRecords"] == 0 and progress["failedRecords"] == 0, batch
    assert batch["completedAt"] is not None, batch


def wait_terminal_timed(client: TestClient, batch_ids: list[str], since: float, timeout_s: float = 60) -> float:
    """Poll every batch until all are terminal; return the seconds from `since` until then."""
    left = set(batch_ids)

    def probe() -> bool:
        for batch_id in list(left):
            if get_batch(client, batch_id)["status"] in TERMINAL:
                left.discard(batch_id)
        return not left

    def unfinished() -> list[tuple[str, str, dict[str, int]]]:
        return [(b, batch["status"], batch["progress"]) for b in sorted(left) for batch in [get_batch(client, b)]]

    wait_until(probe, timeout_s, 0.02, what=f"all {len(batch_ids)} batches to finish", seen=unfinished)
    return time.monotonic() - since


@contextmanager
def running_worker(settings: Settings, log: Path) -> Iterator[ServiceProcess]:
    """A worker process of `settings`, its web server answering; stopped cleanly afterwards."""
    process = start_worker(settings, log)
    try:
        with explained_by(process):
            yield process
    finally:
        code = process.stop()
        assert code == 0, f"worker exited with {code}:\n{process.log()[-3000:]}"


def start_worker(settings: Settings, log: Path) -> ServiceProcess:
    process = ServiceProcess(["-m", "processors.worker"], settings, log).start()
    wait_worker_ready(settings)
    return process


# --- without a timeout -----------------------------------------------------------------------

def test_missing_reference_fails_at_once_without_a_timeout_naming_each_missing_id(
        ingress: TestClient, worker: Any) -> None:
    define_shop(ingress)
    assert run_batch(ingress, "Customer", [{"id": "c-real", "name": "Ann"}])["status"] == "success"
    assert run_batch(ingress, "Product", [{"id": "p-real"}])["status"] == "success"

    batch = run_batch(ingress, "Order", [
        {"id": "o-ok", "customer": "c-real", "products": ["p-real"]},
        {"id": "o-bad", "customer": "c-ghost", "products": ["p-real", "p-ghost"]},
    ])
    assert batch["status"] == "partial_success", batch
    assert batch["progress"]["successfulRecords"] == 1 and batch["progress"]["failedRecords"] == 1, batch
    assert batch["progress"]["pendingRecords"] == 0, batch
    assert batch["errors"]["summary"] == {"MISSING_DEPENDENCY": 1}, batch["errors"]
    assert set(batch["errors"]["details"]) == {"1"}, batch["errors"]
    detail = batch["errors"]["details"]["1"]
    assert detail["externalId"] == "o-bad" and detail["code"] == "MISSING_DEPENDENCY", detail
    for missing in ("c-ghost", "p-ghost"):
        assert missing in detail["message"], detail
    assert read(ingress, "Order", "o-ok")["data"] == {"id": "o-ok", "customer": "c-real", "products": ["p-real"]}
    assert read(ingress, "Order", "o-bad") is None

    # An explicit dependencyWaitTimeout=0 is the same as the default.
    batch = run_batch(ingress, "Order", [{"id": "o-zero", "customer": "c-ghost"}], dependencyWaitTimeout="0")
    assert batch["status"] == "failed", batch
    assert batch["errors"]["summary"] == {"MISSING_DEPENDENCY": 1}, batch["errors"]
    assert "c-ghost" in batch["errors"]["details"]["0"]["message"]
    assert read(ingress, "Order", "o-zero") is None


# --- pending, then released ------------------------------------------------------------------

def test_pending_record_is_reported_and_applies_when_its_reference_arrives(
        ingress: TestClient, worker: Any) -> None:
    ids = define_shop(ingress)
    accepted = time.time()
    order_batch = submit(ingress, "Order", [{"id": "o1", "customer": "c1", "note": "hello"}],
                         dependencyWaitTimeout="120")
    pending = wait_pending(ingress, order_batch)
    seen = time.time()

    assert_pending_only(pending, 1)
    assert pending["progress"]["totalRecords"] == 1
    assert len(pending["pendingResources"]) == 1, pending["pendingResources"]
    entry = pending["pendingResources"][0]
    assert entry["resourceExternalId"] == "o1"
    assert entry["schemaDefinitionId"] == ids["Order"] and entry["schemaName"] == "Order"
    assert entry["missingDependencies"] == [
        {"schemaDefinitionId": ids["Customer"], "schemaName": "Customer", "externalId": "c1"}]
    expires_at = parse_time(entry["expiresAt"])
    assert accepted + 120 - 3 <= expires_at <= seen + 120 + 3, (entry, accepted, seen)
    assert accepted - 3 <= parse_time(entry["createdAt"]) <= seen + 3, (entry, accepted, seen)
    assert read(ingress, "Order", "o1") is None

    # Without includePendingDetails there is no pendingResources key.
    plain = get_batch(ingress, order_batch)
    assert "pendingResources" not in plain, plain
    assert plain["progress"]["pendingRecords"] == 1

    customer_batch = submit(ingress, "Customer", [{"id": "c1", "name": "Ann"}])
    latency = wait_terminal_timed(ingress, [order_batch], time.monotonic())
    print(f"release latency: {latency:.3f}s")

    done = get_batch(ingress, order_batch, details=True)
    assert_all_succeeded(done)
    assert done["pendingResources"] == [], done
    assert done["errors"]["summary"] == {} and done["errors"]["details"] == {}, done["errors"]
    assert read(ingress, "Order", "o1")["data"] == {"id": "o1", "customer": "c1", "note": "hello"}
    assert_all_succeeded(wait_terminal(ingress, customer_batch, tenant_headers()))


def test_record_referencing_several_resources_waits_until_all_exist(ingress: TestClient, worker: Any) -> None:
    ids = define_shop(ingress)
    order_batch = submit(ingress, "Order", [{"id": "o-arr", "products": ["c1", "c2"]}], dependencyWaitTimeout="120")
    entry = wait_pending(ingress, order_batch)["pendingResources"][0]
    assert missing_of(entry) == [(ids["Product"], "Product", "c1"), (ids["Product"], "Product", "c2")], entry

    assert run_batch(ingress, "Product", [{"id": "c1", "title": "one"}])["status"] == "success"

    def c1_arrival_seen() -> dict[str, Any] | None:  # the waiting record has taken c1's arrival in
        batch = get_batch(ingress, order_batch, details=True)
        entries = batch["pendingResources"]
        return batch if entries and missing_of(entries[0]) == [(ids["Product"], "Product", "c2")] else None

    seen = wait_until(c1_arrival_seen, 30, 0.05, what="c1's arrival to reach the waiting record",
                      seen=lambda: get_batch(ingress, order_batch, details=True))
    assert_pending_only(seen, 1)  # and it stays pending: c2 is missing
    assert read(ingress, "Order", "o-arr") is None

    assert run_batch(ingress, "Product", [{"id": "c2", "title": "two"}])["status"] == "success"
    assert_all_succeeded(wait_terminal(ingress, order_batch, tenant_headers()))
    assert read(ingress, "Order", "o-arr")["data"] == {"id": "o-arr", "products": ["c1", "c2"]}


def test_pending_details_list_only_the_references_still_missing(ingress: TestClient, worker: Any) -> None:
    ids = define_shop(ingress)
    order_batch = submit(ingress, "Order", [{"id": "o-arr", "products": ["c1", "c2"]}], dependencyWaitTimeout="120")
    entry = wait_pending(ingress, order_batch)["pendingResources"][0]
    assert missing_of(entry) == [(ids["Product"], "Product", "c1"), (ids["Product"], "Product", "c2")], entry

    assert run_batch(ingress, "Product", [{"id": "c1", "title": "one"}])["status"] == "success"

    def only_c2_missing() -> dict[str, Any] | None:
        batch = get_batch(ingress, order_batch, details=True)
        entries = batch["pendingResources"]
        return batch if entries and missing_of(entries[0]) == [(ids["Product"], "Product", "c2")] else None

    try:
        batch = wait_until(only_c2_missing, 15, 0.05, what="c1 to leave the missing dependencies")
    except AssertionError:
        shown = get_batch(ingress, order_batch, details=True)
        raise AssertionError(f"c1 exists, yet the pending details still say: {shown['pendingResources']}") from None
    assert_pending_only(batch, 1)
    assert batch["pendingResources"][0]["resourceExternalId"] == "o-arr"


def test_self_reference_within_one_batch_applies_whatever_the_order(ingress: TestClient, worker: Any) -> None:
    define(ingress, "Employee", {"name": {"type": "string"}, "manager": ref("Employee")}, ["name"])
    batch = run_batch(ingress, "Employee", [
        {"id": "e2", "name": "Bo", "manager": "e1"},   # its manager comes later in the batch
        {"id": "e1", "name": "Ann"},
    ], dependencyWaitTimeout="60")
    assert_all_succeeded(batch)
    assert batch["progress"]["successfulRecords"] == 2
    assert read(ingress, "Employee", "e1")["data"] == {"id": "e1", "name": "Ann"}
    assert read(ingress, "Employee", "e2")["data"] == {"id": "e2", "name": "Bo", "manager": "e1"}


def test_chain_of_pending_records_applies_when_its_root_arrives(ingress: TestClient, worker: Any) -> None:
    define(ingress, "Country", {}, [])
    define(ingress, "City", {"country": ref("Country")}, ["country"])
    define(ingress, "Street", {"city": ref("City")}, ["city"])

    street = submit(ingress, "Street", [{"id": "s1", "city": "ci1"}], dependencyWaitTimeout=LONG_WAIT)
    wait_pending(ingress, street)
    city = submit(ingress, "City", [{"id": "ci1", "country": "co1"}], dependencyWaitTimeout=LONG_WAIT)
    wait_pending(ingress, city)
    assert_pending_only(get_batch(ingress, street), 1)  # B exists only once A does
    country = submit(ingress, "Country", [{"id": "co1"}], dependencyWaitTimeout=LONG_WAIT)

    for batch_id in (country, city, street):
        assert_all_succeeded(wait_terminal(ingress, batch_id, tenant_headers()))
    assert read(ingress, "Country", "co1")["data"] == {"id": "co1"}
    assert read(ingress, "City", "ci1")["data"] == {"id": "ci1", "country": "co1"}
    assert read(ingress, "Street", "s1")["data"] == {"id": "s1", "city": "ci1"}


# --- expiry ----------------------------------------------------------------------------------

def test_pending_record_fails_with_dependency_timeout_at_its_deadline(ingress: TestClient, worker: Any) -> None:
    ids = define_shop(ingress)
    order_batch = submit(ingress, "Order", [{"id": "o-exp", "customer": "never"}], dependencyWaitTimeout="2")
    entry = wait_pending(ingress, order_batch)["pendingResources"][0]
    expires_at = parse_time(entry["expiresAt"])

    batch = wait_terminal(ingress, order_batch, tenant_headers(), timeout_s=30)
    assert batch["status"] == "failed", batch
    assert batch["progress"]["failedRecords"] == 1 and batch["progress"]["processedRecords"] == 1, batch
    assert batch["progress"]["pendingRecords"] == 0 and batch["progress"]["successfulRecords"] == 0, batch
    assert batch["errors"]["summary"] == {"DEPENDENCY_TIMEOUT": 1}, batch["errors"]
    detail = batch["errors"]["details"]["0"]
    assert detail["externalId"] == "o-exp" and detail["code"] == "DEPENDENCY_TIMEOUT", detail
    late = parse_time(batch["completedAt"]) - expires_at
    print(f"expired {late:.3f}s after the deadline")
    assert 0 <= late <= 2.0, f"failed {late:.3f}s after its deadline ({entry['expiresAt']} → {batch['completedAt']})"
    assert read(ingress, "Order", "o-exp") is None
    assert get_batch(ingress, order_batch, details=True)["pendingResources"] == []

    # The expired record is gone: its reference appearing later changes nothing. A witness waits
    # for the same customer on the expired record's partition: the customer's creation answers
    # every waiter of one partition in one message, so once the witness has applied, whatever
    # that creation sent the expired record has been handled as well.
    partitions = ingress_context(ingress).settings.topic_partitions
    expired_at = partition_for(resource_key("partner-a", "tenant-1", ids["Order"], "o-exp"), partitions)
    witness = next(f"o-witness-{i}" for i in range(1000)
                   if partition_for(resource_key("partner-a", "tenant-1", ids["Order"], f"o-witness-{i}"),
                                    partitions) == expired_at)
    witness_batch = submit(ingress, "Order", [{"id": witness, "customer": "never"}], dependencyWaitTimeout=LONG_WAIT)
    wait_pending(ingress, witness_batch)
    assert run_batch(ingress, "Customer", [{"id": "never", "name": "late"}])["status"] == "success"
    assert_all_succeeded(wait_terminal(ingress, witness_batch, tenant_headers()))
    assert read(ingress, "Order", witness) is not None
    assert read(ingress, "Order", "o-exp") is None
    assert get_batch(ingress, order_batch)["status"] == "failed"


# --- order per resource ------------------------------------------------------------------

def test_record_behind_a_pending_record_waits_and_both_apply_in_order(ingress: TestClient, worker: Any) -> None:
    ids = define_shop(ingress)
    first = submit(ingress, "Order", [{"id": "o1", "customer": "c1", "note": "first", "n": 1}],
                   dependencyWaitTimeout=LONG_WAIT)
    wait_pending(ingress, first)
    # No references of its own: it waits behind the pending record of the same resource.
    second = submit(ingress, "Order", [{"id": "o1", "n": 5}])
    behind = wait_pending(ingress, second)
    assert_pending_only(behind, 1)
    assert len(behind["pendingResources"]) == 1, behind
    entry = behind["pendingResources"][0]
    assert entry["resourceExternalId"] == "o1" and entry["schemaName"] == "Order", entry
    assert missing_of(entry) == [(ids["Customer"], "Customer", "c1")], entry
    assert_pending_only(get_batch(ingress, first), 1)
    assert read(ingress, "Order", "o1") is None

    assert run_batch(ingress, "Customer", [{"id": "c1", "name": "Ann"}])["status"] == "success"
    done_first = wait_terminal(ingress, first, tenant_headers())
    done_second = wait_terminal(ingress, second, tenant_headers())
    assert_all_succeeded(done_first)
    assert_all_succeeded(done_second)
    # Applied in acceptance order: the creation, then the merge whose value wins.
    assert read(ingress, "Order", "o1")["data"] == {"id": "o1", "customer": "c1", "note": "first", "n": 5}
    assert done_first["completedAt"] <= done_second["completedAt"]


def test_record_behind_an_expired_record_is_then_processed_normally(ingress: TestClient, worker: Any) -> None:
    define_shop(ingress)
    assert run_batch(ingress, "Customer", [{"id": "c-real", "name": "Ann"}])["status"] == "success"
    head = submit(ingress, "Order", [{"id": "o2", "customer": "c-ghost", "note": "never applied"}],
                  dependencyWaitTimeout="4")
    wait_pending(ingress, head)
    # A complete creation whose own reference exists, queued behind the head.
    behind = submit(ingress, "Order", [{"id": "o2", "customer": "c-real", "n": 7}], dependencyWaitTimeout="60")
    assert_pending_only(wait_pending(ingress, behind), 1)

    expired = wait_terminal(ingress, head, tenant_headers(), timeout_s=30)
    assert expired["status"] == "failed", expired
    assert expired["errors"]["summary"] == {"DEPENDENCY_TIMEOUT": 1}, expired["errors"]
    applied = wait_terminal(ingress, behind, tenant_headers(), timeout_s=30)
    assert_all_succeeded(applied)
    assert read(ingress, "Order", "o2")["data"] == {"id": "o2", "customer": "c-real", "n": 7}


# --- restarts ----------------------------------------------------------------------------

def test_pending_record_survives_a_worker_restart(settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    define_shop(ingress)
    first = start_worker(settings, tmp_path / "worker1.log")
    try:
        order_batch = submit(ingress, "Order", [{"id": "o-r", "customer": "c-r", "note": "kept"}],
                             dependencyWaitTimeout=LONG_WAIT)
        wait_pending(ingress, order_batch)
    finally:
        code = first.stop(signal.SIGTERM)
    assert code == 0, f"worker exited with {code}:\n{first.log()[-3000:]}"

    with running_worker(settings, tmp_path / "worker2.log"):
        assert_pending_only(get_batch(ingress, order_batch), 1)
        assert run_batch(ingress, "Customer", [{"id": "c-r", "name": "Ann"}])["status"] == "success"
        assert_all_succeeded(wait_terminal(ingress, order_batch, tenant_headers()))
        assert read(ingress, "Order", "o-r")["data"] == {"id": "o-r", "customer": "c-r", "note": "kept"}


def test_pending_deadline_survives_a_worker_restart(settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    define_shop(ingress)
    first = start_worker(settings, tmp_path / "worker1.log")
    try:
        order_batch = submit(ingress, "Order", [{"id": "o-d", "customer": "never"}], dependencyWaitTimeout="8")
        entry = wait_pending(ingress, order_batch)["pendingResources"][0]
    finally:
        code = first.stop(signal.SIGTERM)
    assert code == 0, f"worker exited with {code}:\n{first.log()[-3000:]}"
    expires_at = parse_time(entry["expiresAt"])

    with running_worker(settings, tmp_path / "worker2.log"):
        # A probe batch proves the new worker processes its partitions.
        assert run_batch(ingress, "Customer", [{"id": "probe", "name": "p"}])["status"] == "success"
        working_at = time.time()
        batch = wait_terminal(ingress, order_batch, tenant_headers(), timeout_s=60)
    assert batch["status"] == "failed", batch
    assert batch["errors"]["summary"] == {"DEPENDENCY_TIMEOUT": 1}, batch["errors"]
    assert batch["errors"]["details"]["0"]["externalId"] == "o-d"
    completed_at = parse_time(batch["completedAt"])
    print(f"after restart: expired {completed_at - expires_at:.3f}s after the deadline "
          f"(new worker processing {working_at - expires_at:+.3f}s relative to it)")
    assert completed_at >= expires_at, (entry, batch)
    # The deadline was kept, not restarted: it expired within 2 s of the later of the deadline and
    # the moment the new worker was processing (a restarted deadline would be ≥ 8 s later).
    assert completed_at - max(expires_at, working_at) <= 2.0, (entry["expiresAt"], batch["completedAt"], working_at)
    assert read(ingress, "Order", "o-d") is None


# --- several workers ---------------------------------------------------------------------

def test_two_workers_release_every_pending_record(settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    define_shop(ingress)
    other = replace(settings, worker_web_port=free_port())
    with running_worker(settings, tmp_path / "worker1.log"), running_worker(other, tmp_path / "worker2.log"):
        orders = [f"o{i}" for i in range(40)]
        order_batches = [submit(ingress, "Order", [{"id": f"o{i}", "customer": f"c{i}", "n": i}
                                                   for i in range(b, b + 4)], dependencyWaitTimeout=LONG_WAIT)
                         for b in range(0, 40, 4)]
        for batch_id in order_batches:
            wait_pending(ingress, batch_id, count=4, timeout_s=90)

        customer_batch = submit(ingress, "Customer", [{"id": f"c{i}", "name": f"n{i}"} for i in range(40)])
        latency = wait_terminal_timed(ingress, order_batches, time.monotonic(), timeout_s=90)
        print(f"release latency (2 workers, 40 orders): {latency:.3f}s")

        for batch_id in order_batches:
            assert_all_succeeded(get_batch(ingress, batch_id))
        assert_all_succeeded(wait_terminal(ingress, customer_batch, tenant_headers()))
        for i, order in enumerate(orders):
            assert read(ingress, "Order", order)["data"] == {"id": order, "customer": f"c{i}", "n": i}


def _pin_items(settings: Settings) -> list[tuple[bool, int]]:
    """(on the requests topic?, pin or answer items) of each message carrying some, on the
    requests and notices topics."""
    topics, found = service_topics(settings), []
    for topic, kind in ((topics.dependency_requests.name, "pin"), (topics.dependency_notices.name, "resolved")):
        records = asyncio.run(committed_records(settings.bootstrap_servers, topic, settings.topic_partitions))
        for record in records:
            items = items_of(record.key, orjson.loads(record.value))
            for key, item in items:  # every item of a message is about a resource of its partition
                if item["type"] != "tick":  # the expiry check's wake-up, placed on each partition
                    assert partition_for(key, settings.topic_partitions) == record.partition, (topic, record, key)
            found.append((topic == topics.dependency_requests.name, sum(item["type"] == kind for _, item in items)))
    return [(requests, n) for requests, n in found if n]


def _orders_naming_customers(ingress: TestClient, tag: str, n: int) -> None:
    """`n` customers, then `n` orders naming one each; every customer then refuses a delete
    without cascade (REFERENCED): each order's pin is on its customer's partition."""
    assert run_batch(ingress, "Customer", [{"id": f"{tag}c{i}", "name": "n"} for i in range(n)])["status"] == "success"
    assert_all_succeeded(run_batch(ingress, "Order", [{"id": f"{tag}o{i}", "customer": f"{tag}c{i}"}
                                                      for i in range(n)]))
    response = ingress.request("DELETE", "/api/resources/Customer/batch", headers=tenant_headers(),
                               json={"externalIds": [f"{tag}c{i}" for i in range(n)]})
    assert response.status_code == 202, response.text
    batch = wait_terminal(ingress, response.json()["data"]["batchId"], tenant_headers())
    codes = {detail["code"] for detail in batch["errors"]["details"].values()}
    assert batch["progress"]["failedRecords"] == n and codes == {"REFERENCED"}, batch


def test_a_worker_pins_in_place_on_every_partition_it_processes(settings: Settings, ingress: TestClient,
                                                                 worker: Any) -> None:
    """300 orders naming 300 customers, spread over all partitions, one worker: every pin is
    made in place in the worker's one transaction (`processors.in_place`) — no request, no
    answer travels."""
    ids = define_shop(ingress)
    partitions = settings.topic_partitions
    elsewhere = sum(partition_for(resource_key("partner-a", "tenant-1", ids["Order"], f"go{i}"), partitions)
                    != partition_for(resource_key("partner-a", "tenant-1", ids["Customer"], f"gc{i}"), partitions)
                    for i in range(300))
    assert 0 < elsewhere < 300
    _orders_naming_customers(ingress, "g", 300)
    assert _pin_items(settings) == []


def test_pins_on_another_workers_partitions_travel_grouped_per_partition(settings: Settings, ingress: TestClient,
                                                                        tmp_path: Path) -> None:
    """Two workers: a pin on a partition of the other worker is a request on that partition,
    grouped with the batch's others there (one message per source and target partition), and
    answered the same way; the rest are made in place."""
    define_shop(ingress)
    other = replace(settings, worker_web_port=free_port())
    with running_worker(settings, tmp_path / "worker1.log") as first, \
            running_worker(other, tmp_path / "worker2.log") as second:
        wait_until(lambda: None is not ready_generation(first) == ready_generation(second), 90, 0.1,
                   what="both workers ready with ingest partitions of one generation",
                   seen=lambda: f"generations {ready_generation(first)} and {ready_generation(second)}")
        _orders_naming_customers(ingress, "w", 300)
    found = _pin_items(settings)
    pins, answers = [n for requests, n in found if requests], [n for requests, n in found if not requests]
    assert 0 < sum(pins) < 300 and sum(answers) == sum(pins), found
    # The ingress publishes a batch as one message per partition; each one's pins go out as one
    # message per target partition (at most partitions², if transactions split nothing).
    partitions = settings.topic_partitions
    assert len(pins) <= partitions * partitions and len(answers) <= partitions * partitions, found

