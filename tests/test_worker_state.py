"""A real Faust worker process consumes ingest events into a RocksDB-backed table."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer
from starlette.testclient import TestClient

from reach.config import Settings
from schemas.events import IngestBatch, build_ingest_batch, resource_key
from tests.support import ServiceProcess, bearer, partner_token, wait_until, worker_get
from topics import service_topics

SCHEMA = {"name": "Contact", "externalIdField": "id", "schema": {"type": "object", "required": ["id"], "properties": {
    "id": {"type": "string"}, "name": {"type": "string"}, "email": {"type": "string"},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}}}}


async def _produce(settings: Settings, batch: IngestBatch) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in batch.messages:
            await producer.send_and_wait(service_topics(settings).ingest.name, value, key=key, headers=headers)
    finally:
        await producer.stop()


def _state(settings: Settings, definition_id: str, external_id: str) -> dict | None:
    key = resource_key("partner-a", "tenant-1", definition_id, external_id).decode()
    value = worker_get(settings, "/state/resources", key=key).json()["value"]
    return value["data"] if value else None


def test_worker_table_state_survives_a_restart(settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    created = ingress.post("/partner/schema-definitions", json=SCHEMA, headers=bearer(partner_token()))
    definition_id = created.json()["data"]["id"]
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    try:
        asyncio.run(_produce(settings, build_ingest_batch("partner-a", "tenant-1", definition_id, [
            ("c1", {"id": "c1", "name": "Ada", "address": {"city": "Paris", "zip": "75001"}}),
            ("c2", {"id": "c2", "name": "Bob"}),
            ("c1", {"id": "c1", "address": {"city": "Lyon", "zip": None}, "email": "ada@example.com"}),
        ])))
        expected = {"id": "c1", "name": "Ada", "address": {"city": "Lyon"}, "email": "ada@example.com"}
        wait_until(lambda: _state(settings, definition_id, "c1") == expected, 60, what="the worker to merge c1")
        assert _state(settings, definition_id, "c2") == {"id": "c2", "name": "Bob"}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    stores = list((settings.data_dir / "workers").rglob("resources-*.db"))
    assert stores, "the table is kept in RocksDB files under the worker's data folder"

    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker2.log").start()
    try:
        wait_until(lambda: _state(settings, definition_id, "c1") == expected, 60, what="c1 after the restart")
        assert _state(settings, definition_id, "c2") == {"id": "c2", "name": "Bob"}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert "did not stop cleanly" not in worker.log()  # a clean stop keeps the local stores
