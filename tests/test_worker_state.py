"""A real Faust worker process consumes ingest events into a RocksDB-backed table."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from reach.config import Settings
from schemas.events import encode_ingest_event, resource_key
from tests.support import ServiceProcess, wait_until, worker_get
from topics import service_topics


def _event(i: int, external_id: str, data: dict) -> dict:
    return {
        "eventId": f"b1:{i}", "batchId": "b1", "recordIndex": i, "recordCount": 3,
        "partnerId": "p", "tenantId": "t", "schemaDefinitionId": "s", "externalId": external_id,
        "onConflict": "upsert", "ignoreUnknownFields": False, "dependencyWaitTimeout": 0,
        "acceptedAt": int(time.time() * 1000), "data": orjson.dumps(data).decode(),
    }


async def _produce(settings: Settings, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        for e in events:
            key = resource_key(e["partnerId"], e["tenantId"], e["schemaDefinitionId"], e["externalId"])
            await producer.send_and_wait(service_topics(settings).ingest.name, encode_ingest_event(e), key=key)
    finally:
        await producer.stop()


def _state(settings: Settings, external_id: str) -> dict | None:
    key = resource_key("p", "t", "s", external_id).decode()
    return worker_get(settings, "/state/resources", key=key).json()["value"]


def test_worker_table_state_survives_a_restart(settings: Settings, tmp_path: Path) -> None:
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    try:
        asyncio.run(_produce(settings, [
            _event(0, "c1", {"name": "Ada", "address": {"city": "Paris", "zip": "75001"}}),
            _event(1, "c2", {"name": "Bob"}),
            _event(2, "c1", {"address": {"city": "Lyon", "zip": None}, "email": "ada@example.com"}),
        ]))
        expected = {"name": "Ada", "address": {"city": "Lyon"}, "email": "ada@example.com"}
        wait_until(lambda: _state(settings, "c1") == expected, 60, what="the worker to merge c1")
        assert _state(settings, "c2") == {"name": "Bob"}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    stores = list((settings.data_dir / "workers").rglob("resources-*.db"))
    assert stores, "the table is kept in RocksDB files under the worker's data folder"

    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker2.log").start()
    try:
        wait_until(lambda: worker_get(settings, "/state/resources", key="x").status_code == 200, 60,
                   what="the restarted worker to answer")
        wait_until(lambda: _state(settings, "c1") == expected, 30, what="c1 after the restart")
        assert _state(settings, "c2") == {"name": "Bob"}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
