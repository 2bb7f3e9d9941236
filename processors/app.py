"""The Faust application: topics, tables and agents of one worker process.

One agent, `apply_records`, consumes three co-partitioned topics keyed by resource: the
ingest topic, dependency requests ("R waits for this resource"; also ingest messages handed on
from another partition) and dependency notices ("what R waits for exists now", expiry ticks).
Per record (`processors.routing` picks its handler): decode → on another partition than its
resource's? hand it on there (`processors.hand_on`) → definition → checks → references
present? → apply to the `resources` table → publish the resource and the record's outcome; or
hold the record pending (`processors.resource_processor`).
Requests and creations of one resource meet on its partition (`processors.dependencies`).

The worker runs with Faust's `exactly_once` guarantee, made exact by
`processors.transactions`: an event's table changes, its published messages and its
consumed offset commit in one Kafka transaction, the worker's one for all its partitions.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from faust.types import TP, ChannelT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processors import metrics
from processors.commit_pacing import CommitPacer
from processors.dependencies import DependencyIndex
from processors.resource_processor import ResourceProcessor
from processors.routing import RecordRouter
from processors.transactions import ExactlyOnce
from reach import heap, seam
from reach.config import Settings
from schemas.definition_view import DefinitionView
from schemas.definitions import Definition
from topics.definitions import service_topics

log = logging.getLogger(__name__)
TICK_INTERVAL_S = 0.5
LAG_INTERVAL_S = 1.0  # how often the consumer lag gauges are measured
TICK = orjson.dumps({"type": "tick"})
WORKER_REQUEST_TIMEOUT_S = 10.0  # see create_app


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{hp.strip()}" for hp in bootstrap_servers.split(","))


# Per store (a table's partition: three tables times the partitions a worker owns), so that a
# worker's memory is bounded by configuration, not by what is stored; Faust's defaults are a
# 2 GiB block cache and three 64 MiB write buffers per store.
TABLE_STORE_OPTIONS = {"block_cache_size": 8 * 1024 * 1024, "write_buffer_size": 4 * 1024 * 1024,
                       "max_write_buffer_number": 2}


def worker_datadir(settings: Settings) -> Path:
    """Where this worker keeps its RocksDB stores (one folder per worker web port)."""
    return settings.data_dir / "workers" / f"{settings.app_id}-{settings.worker_web_port}"


def worker_instance_id(settings: Settings) -> str:
    """This worker's static member id in the group (KIP-345): its host and web port, as stable
    as its data folder, so that a restarted worker takes its partitions back at once, without
    a rebalance nor a wait for its former session to time out."""
    return f"{socket.gethostname()}-{settings.worker_web_port}"


def faust_app(settings: Settings, datadir: Path) -> faust.App:
    """The worker's Faust app, configured: exactly-once, static membership, timeouts."""
    return faust.App(
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
        # Outputs are already record batches, handed over at the commit (`processors.transactions`):
        # lingering would only delay the commit that waits for them.
        producer_linger=0.0,
        producer_max_batch_size=512 * 1024,
        # A worker that died is noticed within this, and its partitions move to the others; one
        # that stops (static members do not leave the group) keeps them this long for its return.
        # The broker's least (group.min.session.timeout.ms); heartbeats go every second from the
        # consumer's own thread, so a busy event loop does not miss them.
        broker_session_timeout=6.0,
        consumer_group_instance_id=worker_instance_id(settings),
        broker_heartbeat_interval=1.0,
        # A request to a node that stopped answering (paused, cut off) is given up after this
        # and asked again of the partition's new leader. Faust's defaults (90 s for the consumer,
        # 20 minutes for the producer) held a worker's fetches and commits for a paused node's
        # whole pause, long after Kafka had moved its leaders (tests/test_cluster_faults.py).
        broker_request_timeout=WORKER_REQUEST_TIMEOUT_S,  # at least the session timeout (Faust checks)
        producer_request_timeout=WORKER_REQUEST_TIMEOUT_S,
        web_host=settings.http_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
    )


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app for the deployment that `settings` describe."""
    datadir = worker_datadir(settings)
    datadir.parent.mkdir(parents=True, exist_ok=True)
    seam.install_faust()  # our exactly-once on Faust's classes, with aiokafka's retries sooner
    app = faust_app(settings, datadir)
    topics = service_topics(settings)
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    # Co-partitioned: the agent sees partition p of all three.
    records_in = app.topic(topics.ingest.name, topics.dependency_requests.name, topics.dependency_notices.name,
                           **raw)
    parts = settings.topic_partitions
    # The resources topic is the resources table's changelog: one message per change, read
    # by Faust to restore the table and by everyone else as the resources' latest state.
    resources = app.Table("resources", default=None, partitions=parts, key_type=bytes,
                          changelog_topic=app.topic(topics.resources.name, partitions=parts, **raw),
                          options=dict(TABLE_STORE_OPTIONS))
    pending = app.Table("pending", default=None, partitions=parts, key_type=bytes, options=dict(TABLE_STORE_OPTIONS))
    waiters = app.Table("waiters", default=None, partitions=parts, key_type=bytes, options=dict(TABLE_STORE_OPTIONS))
    # Who references a resource (key: its key, NUL, the referrer's key), on its partition.
    referrers = app.Table("referrers", default=None, partitions=parts, key_type=bytes,
                          options=dict(TABLE_STORE_OPTIONS))

    registry = DefinitionView(settings.bootstrap_servers, topics.schema_definitions.name)
    views_started = asyncio.Event()

    @app.task
    async def start_views() -> None:
        # Faust's monitor records statistics for its web pages at every event; we serve none.
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)
        await registry.start()
        views_started.set()
        heap.settle()

    async def definition_of(body: Mapping[str, Any]) -> Definition | None:
        await views_started.wait()
        found = registry.get(body["partnerId"], body["schemaDefinitionId"])
        if found is None:
            await registry.sync()  # written moments ago through another process
            found = registry.get(body["partnerId"], body["schemaDefinitionId"])
        return found

    eos = ExactlyOnce(app, {t.name: t.partitions for t in topics.all()}, settings.bootstrap_servers,
                      inputs=records_in.topics, requests=topics.dependency_requests.name)
    pacer = CommitPacer(app)
    index = DependencyIndex(eos, topics, resources, waiters, referrers, topics.ingest.partitions,
                            released=pacer.released)
    processor = ResourceProcessor(eos, topics, resources, pending, index, definition_of, topics.ingest.partitions,
                                  released=pacer.released)

    router = RecordRouter(eos, topics, processor, index)

    @app.agent(records_in)
    async def apply_records(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            pacer.event_began()
            async with eos.lock:  # commits happen between events: see transactions.py
                for record in await eos.in_order(event):
                    try:
                        await router.route(record)
                    except Exception as exc:
                        # Half its outputs may be in the open transaction: stop, so that it
                        # aborts and the record is processed again from the committed offset.
                        log.critical("processing %s[%s]@%s failed; stopping the worker",
                                     record.message.topic, record.message.partition, record.message.offset)
                        eos.fail(exc)  # Faust's commit as it stops would carry the half
                        await app.crash(exc)
                        return
                    eos.done(record)
            pacer.event_ended(dry=cast(ChannelT, stream.channel).empty())  # a Channel; StreamT types it an iterator

    @app.task
    async def commit_when_idle() -> None:
        await pacer.commit_when_idle()

    @app.task
    async def commit_when_released() -> None:
        await pacer.commit_when_released()

    @app.timer(TICK_INTERVAL_S)
    async def tick() -> None:
        """Wake the expiry check of every notices partition this worker owns that has a deadline
        due (or whose deadlines are still to be read: `processors.deadlines`)."""
        for tp in app.consumer.assignment():
            if tp.topic == topics.dependency_notices.name and processor.needs_tick(tp.partition):
                await app.producer.send(tp.topic, b"tick", TICK, tp.partition, None, None)

    @app.timer(LAG_INTERVAL_S)
    async def measure_lag() -> None:
        owned = [tp for tp in app.consumer.assignment() if tp.topic == topics.ingest.name]
        lags = {}
        for tp in owned:
            end = app.consumer.highwater(tp)  # the last stable offset: the worker reads read_committed
            position = eos.next_offset(tp)
            if end is not None and position is not None:
                lags[tp.partition] = max(end - position, 0)
        metrics.set_lags(lags, (tp.partition for tp in owned))

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus metrics of this worker (`processors.metrics`)."""

        async def get(self, request: Request) -> Response:
            # In the headers: aiohttp refuses a content_type argument with a charset in it.
            return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # mode types a receiver as taking any positional arguments; Faust sends these one.
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def rebuild_deadlines(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        metrics.REBALANCES.inc()
        # Not eos.forget: the revocation before every assignment did, and the seek that
        # tells eos where partitions resume may already have run.
        processor.forget_partitions({tp.partition for tp in assigned})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def drop_deadlines(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        processor.forget_partitions({tp.partition for tp in revoked})
        eos.forget(revoked)

    @app.page("/state/resources")
    class ResourceState(View):
        """The worker's own copy of one resource (for operators and tests)."""

        async def get(self, request: Request) -> Response:
            key = request.query.get("key", "").encode()
            value: Any = resources.get(key)
            return self.json({"key": key.decode(), "value": value})

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_views(app: faust.App, **kwargs: Any) -> None:
        await registry.stop()
        await eos.close()

    return app
