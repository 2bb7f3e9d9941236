"""The Faust application: topics, tables and agents of one worker process.

Flow per ingest event (one record):
    decode → definition (schema registry) → [dependency step: issue 5] → apply to the
    `resources` table → publish the resource to the resources topic and the record's
    outcome to the batch-events topic.

The worker runs with Faust's `exactly_once` guarantee, made exact by
`processors.transactions`: an event's table changes, its published messages and its
consumed offset commit in one Kafka transaction. Outputs go to the partition number of the
event they come from, so that they belong to that partition's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View

from processors.apply import Outcome, apply_record
from processors.transactions import ExactlyOnce
from reach.config import Settings
from schemas.batch_events import FAILED, SCHEMA_NOT_FOUND, BatchMeta, outcome
from schemas.definitions import Definition
from schemas.events import decode_ingest_event
from schemas.registry import SchemaRegistry
from schemas.validation import validators_for
from topics.definitions import service_topics

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap_servers.split(","))


def worker_datadir(settings: Settings) -> Path:
    """Where this worker keeps its RocksDB stores (one folder per worker web port)."""
    return settings.data_dir / "workers" / f"{settings.app_id}-{settings.worker_web_port}"


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app for the deployment that `settings` describe."""
    datadir = worker_datadir(settings)
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap_servers),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="exactly_once",
        # Each commit ends a transaction: results become visible to readers only then.
        broker_commit_interval=0.1,
        # A worker that died is noticed within this, and its partitions move to the others.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        web_host=settings.http_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
    )
    topics = service_topics(settings)
    ingest = app.topic(topics.ingest.name, key_serializer="raw", value_serializer="raw",
                       partitions=topics.ingest.partitions)
    resources = app.Table("resources", default=None, partitions=topics.ingest.partitions, key_type=bytes)
    registry = SchemaRegistry(settings.bootstrap_servers, topics.schema_definitions.name)
    registry_started = asyncio.Event()

    @app.task
    async def start_registry() -> None:
        await registry.start()
        registry_started.set()

    async def definition_of(event: dict[str, Any]) -> Definition | None:
        await registry_started.wait()
        found = registry.get(event["partnerId"], event["schemaDefinitionId"])
        if found is None:
            await registry.sync()  # written moments ago through another process
            found = registry.get(event["partnerId"], event["schemaDefinitionId"])
        return found

    eos = ExactlyOnce(app)

    async def publish_outcome(event: faust.EventT, body: dict[str, Any], result: Outcome, now_ms: int) -> None:
        meta = BatchMeta.of_event(body)
        source = {"sourcePartition": event.message.partition, "sourceOffset": event.message.offset}
        await eos.send(event, topics.batch_events.name, meta.batchId.encode(), outcome(
            meta, body["recordIndex"], body["externalId"], result.status, now_ms, result.code, result.message,
            source))

    async def apply_event(event: faust.EventT) -> None:
        key: bytes = event.key
        body = decode_ingest_event(event.value)
        now_ms = int(time.time() * 1000)
        definition = await definition_of(body)
        if definition is None:
            result = Outcome(FAILED, SCHEMA_NOT_FOUND, f"schema definition {body['schemaDefinitionId']} does not exist")
            await publish_outcome(event, body, result, now_ms)
            return
        version = body["schemaVersion"] or definition.versionNumber
        validators = validators_for(definition.id, version, definition.schema_of_version(version))
        changed, result = apply_record(resources.get(key), body, orjson.loads(body["data"]),
                                       definition, validators, now_ms)
        if changed is not None:
            await eos.put(event, resources, key, changed)
            await eos.send(event, topics.resources.name, key, orjson.dumps(changed))
        await publish_outcome(event, body, result, now_ms)

    @app.agent(ingest)
    async def apply_records(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            async with eos.lock:  # commits happen between events: see transactions.py
                await apply_event(event)
                eos.done(event)

    @app.page("/state/resources")
    class ResourceState(View):
        """The worker's own copy of one resource (for operators and tests)."""

        async def get(self, request: Request) -> Response:
            key = request.query.get("key", "").encode()
            value: Any = resources.get(key)
            return self.json({"key": key.decode(), "value": value})

    @app.on_before_shutdown.connect
    async def stop_registry(app: faust.App, **kwargs: Any) -> None:
        await registry.stop()

    return app
