"""The Faust application: topics, tables and agents of one worker process."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from reach.config import Settings
from schemas.events import decode_ingest_event, record_data
from processors.merge import merge_patch
from topics.definitions import service_topics


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap_servers.split(","))


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app for the deployment that `settings` describe."""
    datadir = settings.data_dir / "workers" / f"{settings.app_id}-{settings.worker_web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap_servers),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_host=settings.http_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        processing_guarantee="exactly_once",
    )
    topics = service_topics(settings)
    ingest = app.topic(
        topics.ingest.name,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.ingest.partitions,
    )
    resources = app.Table(
        "resources", default=None, partitions=topics.ingest.partitions, key_type=bytes,
    )

    @app.agent(ingest)
    async def apply_records(stream: faust.StreamT[bytes]) -> None:
        async for key, payload in stream.items():
            event = decode_ingest_event(payload)
            resources[key] = merge_patch(resources.get(key), record_data(event))

    @app.page("/state/resources")
    class ResourceState(View):
        async def get(self, request: Request) -> Response:
            key = request.query.get("key", "").encode()
            value: Any = resources.get(key)
            return self.json({"key": key.decode(), "value": value})

    return app
