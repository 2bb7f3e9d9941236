"""Readers (`state.reader`): each follows its share of the partitions, the ingress asks them and
keeps no copy; together they answer as one store, and a reader that is down is a 503 with
Retry-After for the reads that need it, never a wrong answer."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from ingest.app import create_app, ingress_state_dir
from reach.config import Settings
from schemas.events import resource_key
from tests.support import (ServiceProcess, bearer, free_port, partner_token, readers, tenant_token, wait_reader_ready,
                           wait_terminal)
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
        # Writes go on while it is down.
        _upload(client, "Customer", [{"id": f"late{i}"} for i in range(20)])

        everyone = sorted(customers + [f"late{i}" for i in range(20)])
        for run in ("after SIGKILL", "after SIGTERM"):
            again = ServiceProcess(["-m", "state.reader"], replace(settings, reader_index=1),
                                   tmp_path / f"reader1-{run[6:]}.log").start()
            try:
                wait_reader_ready(settings, 1)
                listed_ids, totals = _every_page(client, "Customer", 25)
                assert listed_ids == everyone and totals == {80}, (run, len(listed_ids), totals)
                if run == "after SIGTERM":  # a clean stop flushed its store: it reads on from there
                    assert "reads on from its checkpoint" in again.log(), again.log()[-2000:]
            finally:
                again.stop()


def test_a_reader_refuses_an_index_outside_its_urls(settings: Settings, tmp_path: Path) -> None:
    process = ServiceProcess(["-m", "state.reader"], replace(settings, reader_index=3), tmp_path / "bad.log").start()
    assert process.proc is not None
    code = process.proc.wait(60)
    assert code != 0 and "REACH_READER_INDEX=3 names no URL" in process.log(), process.log()[-2000:]
