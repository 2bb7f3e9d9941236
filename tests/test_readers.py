"""Readers (`state.reader`): each follows its share of the partitions of the resources and
batch-events topics, the ingress asks them and keeps no copy (only its per-batch ledger);
together they answer as one store, and a reader that is down is a 503 with Retry-After for the
reads that need it, never a wrong answer."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from ingest.app import create_app, ingress_state_dir
from reach.config import Settings
from schemas.events import resource_key
from tests.support import (
    ServiceProcess,
    bearer,
    free_port,
    partner_token,
    readers,
    tenant_token,
    unique,
    wait_reader_ready,
    wait_terminal,
    wait_worker_ready,
)
from topics import service_topics
from topics.partitioning import partition_for

CUSTOMER = {"name": "Customer", "externalIdField": "id",
            "schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"},
                                                                             "n": {"type": "integer"}}}}
ORDER = {"name": "Order", "externalIdField": "id",
         "schema": {"type": "object", "required": ["id"], "properties": {
             "id": {"type": "string"}, "customer": {"$ref": "reach:schemas/Customer"}}}}


def _two_readers(settings: Settings) -> Settings:
    return replace(settings, reader_urls=(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"))


def _upload(client: TestClient, schema: str, resources: list[dict[str, Any]]) -> None:
    response = client.post(f"/api/resources/{schema}/batch", json={"resources": resources},
                           headers=bearer(tenant_token()))
    assert response.status_code == 202, response.text
    batch = wait_terminal(client, response.json()["data"]["batchId"], bearer(tenant_token()))
    assert batch["status"] == "success", batch


def _every_page(client: TestClient, schema: str, limit: int) -> tuple[list[str], set[int]]:
    ids: list[str] = []
    totals: set[int] = set()
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = client.get(f"/api/resources/{schema}", params=params, headers=bearer(tenant_token()))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        ids += [r["resourceExternalId"] for r in data["results"]]
        totals.add(data["pagination"]["total"])
        if not data["pagination"]["hasNextPage"]:
            return ids, totals
        params["cursor"] = data["pagination"]["cursor"]


def _reader_of(settings: Settings, definition_id: str, external_id: str) -> int:
    key = resource_key("partner-a", "tenant-1", definition_id, external_id)
    return partition_for(key, settings.topic_partitions) % len(settings.reader_urls)


def test_two_readers_answer_as_one_store(settings: Settings, worker: Any, tmp_path: Path) -> None:
    settings = _two_readers(settings)
    with readers(settings, tmp_path), TestClient(create_app(settings)) as client:
        ids = {}
        for definition in (CUSTOMER, ORDER):
            response = client.post("/partner/schema-definitions", json=definition, headers=bearer(partner_token()))
            assert response.status_code == 200, response.text
            ids[definition["name"]] = response.json()["data"]["id"]
        customers = [f"c{i:03d}" for i in range(240)]
        _upload(client, "Customer", [{"id": c, "n": i} for i, c in enumerate(customers)])
        owners = {_reader_of(settings, ids["Customer"], c) for c in customers}
        assert owners == {0, 1}, "the test's resources should live on both readers' partitions"

        # Pages merge both readers' shares: every resource once, in order, the total of both.
        for limit in (1, 7, 100):
            listed, totals = _every_page(client, "Customer", limit)
            assert listed == customers, f"limit {limit}: pages listed {len(listed)} resources, not each once in order"
            assert totals == {240}, f"limit {limit}: totals {totals}"

        # Orders on either reader reference customers on either reader.
        orders = [{"id": f"o{i}", "customer": customers[i]} for i in range(0, 40, 2)]
        _upload(client, "Order", orders)
        got = client.get("/api/resources/Order/o4", params={"include": "customer"}, headers=bearer(tenant_token()))
        assert got.status_code == 200 and got.json()["data"]["included"][0]["resourceExternalId"] == "c004", got.text
        dry = client.request("DELETE", "/api/resources/Customer/batch", headers=bearer(tenant_token()),
                             json={"externalIds": customers[:10], "cascade": True, "dryRun": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["data"]["wouldDelete"] == {"Customer": 10, "Order": 5}, dry.text
        without = client.request("DELETE", "/api/resources/Customer/batch", headers=bearer(tenant_token()),
                                 json={"externalIds": customers[:10], "dryRun": True})
        assert without.json()["data"]["skippedDueToReferences"] == 5, without.text

        response = client.request("DELETE", "/api/resources/Order/batch", json={"deleteAll": True},
                                  headers=bearer(tenant_token()))
        assert response.status_code == 202 and response.json()["data"]["recordCount"] == 20, response.text
        wait_terminal(client, response.json()["data"]["batchId"], bearer(tenant_token()))
        listed, totals = _every_page(client, "Order", 50)
        assert listed == [] and totals == {0}, (listed, totals)

    # The ingress keeps no resources of its own on disk.
    kept = sorted(p.name for p in ingress_state_dir(settings).iterdir()) if ingress_state_dir(settings).exists() else []
    assert "resources" not in kept, f"the ingress stored resources: {kept}"


def test_a_reader_down_is_a_503_for_its_share_and_restarts_from_its_checkpoint(
        settings: Settings, worker: Any, tmp_path: Path) -> None:
    settings = _two_readers(settings)
    with readers(settings, tmp_path) as processes, TestClient(create_app(settings)) as client:
        response = client.post("/partner/schema-definitions", json=CUSTOMER, headers=bearer(partner_token()))
        definition_id = response.json()["data"]["id"]
        customers = [f"c{i:03d}" for i in range(60)]
        _upload(client, "Customer", [{"id": c} for c in customers])
        by_reader = {r: [c for c in customers if _reader_of(settings, definition_id, c) == r] for r in (0, 1)}

        processes[1].stop(signal.SIGKILL)
        for n in range(10):  # every read that needs reader 1 answers 503, each time; reader 0's keep answering
            down = client.get(f"/api/resources/Customer/{by_reader[1][n % len(by_reader[1])]}",
                              headers=bearer(tenant_token()))
            assert down.status_code == 503 and down.headers.get("retry-after") == "1", (n, down.status_code, down.text)
            up = client.get(f"/api/resources/Customer/{by_reader[0][n % len(by_reader[0])]}",
                            headers=bearer(tenant_token()))
            assert up.status_code == 200, (n, up.text)
        listed = client.get("/api/resources/Customer", headers=bearer(tenant_token()))
        assert listed.status_code == 503, "a list without one reader's share must not answer a partial page"
        # Writes go on while it is down (its batch's status may be one of reader 1's: asked later).
        late = client.post("/api/resources/Customer/batch", json={"resources": [{"id": f"late{i}"} for i in range(20)]},
                           headers=bearer(tenant_token()))
        assert late.status_code == 202, late.text

        everyone = sorted(customers + [f"late{i}" for i in range(20)])
        for run in ("after SIGKILL", "after SIGTERM"):
            again = ServiceProcess(["-m", "state.reader"], replace(settings, reader_index=1),
                                   tmp_path / f"reader1-{run[6:]}.log").start()
            try:
                wait_reader_ready(settings, 1)
                assert wait_terminal(client, late.json()["data"]["batchId"], bearer(tenant_token()))["status"] == \
                    "success"
                listed_ids, totals = _every_page(client, "Customer", 25)
                assert listed_ids == everyone and totals == {80}, (run, len(listed_ids), totals)
                if run == "after SIGTERM":  # a clean stop flushed its store: it reads on from there
                    assert "reads on from its checkpoint" in again.log(), again.log()[-2000:]
            finally:
                again.stop()


def test_a_reader_refuses_an_index_outside_its_urls(settings: Settings, tmp_path: Path) -> None:
    process = ServiceProcess(["-m", "state.reader"], replace(settings, reader_index=3), tmp_path / "bad.log").start()
    code = process.proc.wait(60)
    assert code != 0 and "REACH_READER_INDEX=3 names no URL" in process.log(), process.log()[-2000:]


def test_batches_of_both_readers_list_as_one_and_the_ingress_keeps_no_outcomes(
        settings: Settings, worker: Any, tmp_path: Path) -> None:
    settings = _two_readers(settings)
    with readers(settings, tmp_path), TestClient(create_app(settings)) as client:
        response = client.post("/partner/schema-definitions", json=CUSTOMER, headers=bearer(partner_token()))
        assert response.status_code == 200, response.text
        _upload(client, "Customer", [{"id": "taken"}])
        accepted = []
        for n in range(12):  # each with a record that fails: "taken" exists (onconflict=reject)
            response = client.post("/api/resources/Customer/batch", headers=bearer(tenant_token()),
                                   params={"onconflict": "reject"},
                                   json={"resources": [{"id": f"b{n}-{i}"} for i in range(5)] + [{"id": "taken"}]})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["data"]["batchId"])
        owners = {partition_for(b.encode(), settings.topic_partitions) % 2 for b in accepted}
        assert owners == {0, 1}, "the test's batches should live on both readers' partitions"
        for batch_id in accepted:
            batch = wait_terminal(client, batch_id, bearer(tenant_token()))
            assert batch["status"] == "partial_success" and batch["errors"]["details"]["5"]["code"], batch
            records = client.get(f"/api/batches/{batch_id}/records", params={"status": "failed"},
                                 headers=bearer(tenant_token())).json()["data"]
            assert [r["index"] for r in records["results"]] == [5], records

        listed: list[str] = []
        created: list[str] = []
        params: dict[str, Any] = {"limit": 5}
        while True:
            data = client.get("/api/batches", params=params, headers=bearer(tenant_token())).json()["data"]
            listed += [b["batchId"] for b in data["results"]]
            created += [b["createdAt"] for b in data["results"]]
            assert data["pagination"]["total"] == 13, data["pagination"]
            if not data["pagination"]["hasNextPage"]:
                break
            params["cursor"] = data["pagination"]["cursor"]
        assert sorted(listed[:12]) == sorted(accepted) and len(listed) == 13, (listed, accepted)
        assert created == sorted(created, reverse=True), f"not newest first: {created}"
        only_partial = client.get("/api/batches", params={"status": "partial_success", "limit": 100},
                                  headers=bearer(tenant_token())).json()["data"]
        assert only_partial["pagination"]["total"] == 12, only_partial["pagination"]

    kept = sorted(p.name for p in ingress_state_dir(settings).iterdir())
    assert kept == ["ledger"], f"the ingress keeps more than its per-batch ledger: {kept}"


def test_reads_are_answered_while_the_only_worker_is_down_and_it_takes_its_partitions_back_on_return(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    """`make run`'s single worker SIGKILLed: reads come from the readers, so every read of a
    stored resource still answers it (no wait, no error) and a list still holds all of them;
    an upload meanwhile is accepted and waits; the worker back (its static membership takes its
    partitions back without waiting for its old session to time out) finishes it."""
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    wait_worker_ready(settings)
    assert ingress.post("/partner/schema-definitions", json=CUSTOMER,
                        headers=bearer(partner_token())).status_code == 200
    _upload(ingress, "Customer", [{"id": f"c{i:02d}", "n": i} for i in range(20)])

    worker.stop(signal.SIGKILL)
    accepted = ingress.post("/api/resources/Customer/batch", json={"resources": [{"id": "c20", "n": 20}]},
                            headers=bearer(tenant_token()))
    assert accepted.status_code == 202, accepted.text
    for round_ in range(3):  # reads keep answering, not just the first
        for i in range(20):
            response = ingress.get(f"/api/resources/Customer/c{i:02d}", headers=bearer(tenant_token()))
            assert response.status_code == 200, f"round {round_}, c{i:02d}: {response.status_code} {response.text}"
            assert response.json()["data"]["result"]["data"] == {"id": f"c{i:02d}", "n": i}, response.text
    ids, totals = _every_page(ingress, "Customer", 7)
    assert ids == [f"c{i:02d}" for i in range(20)] and totals == {20}, (ids, totals)
    batch_id = accepted.json()["data"]["batchId"]
    status = ingress.get(f"/api/batches/{batch_id}", headers=bearer(tenant_token()))
    assert status.status_code == 200 and status.json()["data"]["status"] == "queued", status.text

    started = time.monotonic()
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker-again.log").start()
    try:
        batch = wait_terminal(ingress, batch_id, bearer(tenant_token()), timeout_s=60)
        assert batch["status"] == "success", batch
        print(f"the worker back after SIGKILL: its batch done {time.monotonic() - started:.1f} s after its start")
        assert ingress.get("/api/resources/Customer/c20", headers=bearer(tenant_token())).json()["data"]["result"][
            "data"] == {"id": "c20", "n": 20}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_read_sees_a_transaction_that_commits_as_it_asks(settings: Settings, tmp_path: Path) -> None:
    """A transaction's commit markers reach its partitions one at a time: a batch can be reported
    terminal from its batch-events partition while the marker of its records on a resources
    partition is still on its way, and a read asked at that moment must still see them (a list
    read at once after a batch's success missed its first record so, under load). Here the
    transaction is still open when the read is sent and commits right after it."""
    topic = service_topics(settings).resources
    missed = []
    with readers(settings, tmp_path):
        url = settings.reader_urls[0]

        async def round_(n: int) -> None:
            resource = {"platformId": "partner-a", "businessId": "tenant-1", "schemaDefinitionId": "s1",
                        "resourceExternalId": f"r{n}", "n": n}
            key = resource_key("partner-a", "tenant-1", "s1", f"r{n}")
            producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                        transactional_id=unique("committing"))
            await producer.start()
            try:
                await producer.begin_transaction()
                await producer.send_and_wait(topic.name, orjson.dumps(resource), key,
                                             partition=partition_for(key, topic.partitions))
                async with httpx.AsyncClient(timeout=30) as http:
                    read = asyncio.create_task(http.post(f"{url}/resources/get", content=orjson.dumps(
                        {"sync": "try", "keys": [["partner-a", "tenant-1", "s1", f"r{n}"]]})))
                    await producer.commit_transaction()
                    answer = await read
            finally:
                await producer.stop()
            assert answer.status_code == 200, answer.text
            if answer.json()["found"] != [resource]:
                missed.append((n, answer.json()["found"]))

        async def rounds() -> None:
            for n in range(10):
                await round_(n)

        asyncio.run(rounds())
    assert not missed, f"reads missed the record of a transaction committed as they asked: {missed}"
