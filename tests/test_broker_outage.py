"""A 202 is a promise: with the broker gone the ingress answers 503 in bounded time, never 202,
and accepts again once the broker is back; nothing accepted before is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ingest.app import create_app
from reach.broker import LocalBroker
from tests.support import (
    ServiceProcess,
    bearer,
    free_port,
    isolated_settings,
    partner_token,
    tenant_token,
    wait_terminal,
    wait_until,
)
from topics import create_topics, service_topics

SCHEMA = {"name": "Item", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A local broker of this test alone, so that stopping it disturbs no other test."""
    broker = LocalBroker(work_dir=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    yield broker
    broker.stop()


def test_uploads_answer_503_while_the_broker_is_down_and_202_once_it_is_back(
        own_broker: LocalBroker, tmp_path: Path) -> None:
    settings = replace(isolated_settings(own_broker.bootstrap, tmp_path / "data"), produce_timeout_s=3.0)
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    tenant = bearer(tenant_token())
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    try:
        with TestClient(create_app(settings)) as ingress:
            assert ingress.post("/partner/schema-definitions", json=SCHEMA,
                                headers=bearer(partner_token())).status_code == 200
            before = ingress.post("/api/resources/item/batch", json={"resources": [{"id": "a", "n": 1}]},
                                  headers=tenant)
            assert before.status_code == 202

            own_broker.stop()
            answers = []
            for attempt in range(3):
                started = time.monotonic()
                response = ingress.post("/api/resources/item/batch", json={"resources": [{"id": f"b{attempt}"}]},
                                        headers=tenant)
                answers.append((response.status_code, time.monotonic() - started))
            assert [code for code, _ in answers] == [503, 503, 503], answers
            assert all(seconds < settings.produce_timeout_s + 5 for _, seconds in answers), answers
            assert ingress.get("/ready").status_code == 503
            # Reads that must catch up with Kafka first say so too, in bounded time; a batch this
            # ingress already knows still answers from its table.
            started = time.monotonic()
            assert ingress.get("/api/batches", headers=tenant).status_code == 503
            assert time.monotonic() - started < 10
            assert ingress.get(f"/api/batches/{before.json()['data']['batchId']}", headers=tenant).status_code == 200

            own_broker.start()
            after = wait_until(lambda: _accepted(ingress, tenant), 90, 1.0, what="uploads to be accepted again")
            assert ingress.get("/ready").status_code == 200
            for batch_id in (before.json()["data"]["batchId"], after):
                assert wait_terminal(ingress, batch_id, tenant, 120)["status"] == "success"
            assert ingress.get("/api/resources/item/a", headers=tenant).json()["data"]["result"]["data"] == \
                {"id": "a", "n": 1}
            for attempt in range(3):  # refused while the broker was down: never stored
                assert ingress.get(f"/api/resources/item/b{attempt}", headers=tenant).status_code == 404
    finally:
        worker.stop()


def _accepted(ingress: TestClient, headers: dict[str, str]) -> str | None:
    response = ingress.post("/api/resources/item/batch", json={"resources": [{"id": "c", "n": 3}]}, headers=headers)
    return response.json()["data"]["batchId"] if response.status_code == 202 else None
