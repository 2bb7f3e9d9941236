"""The Starlette application of the ingress."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka.errors import KafkaError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route

from ingest import (
    batch_progress,
    batch_records,
    batch_status,
    deletes,
    resource_reads,
    resource_writes,
    schema_definitions,
    schema_registry,
    uploads,
)
from ingest.context import Ingress, Part, ingress_of, ingress_of_app
from ingest.idempotency import ClaimLog
from ingest.kafka import KafkaGateway
from ingest.metrics import MetricsMiddleware, metrics
from ingest.openapi import openapi
from ingest.publisher import TRANSACTION_TIMEOUT_S, BatchPublisher
from ingest.quotas import Admission, RateLimitHeaders, record_spacing_ms
from ingest.responses import ApiError, JSONResponse, ok
from reach import heap
from reach.config import Settings
from schemas.definition_view import DefinitionView
from schemas.subjects import Subjects
from state.bookkeeping import BatchLedger
from state.remote import BatchReads, ReaderTotals, ReaderUnavailable, ResourceReads
from topics import service_topics

log = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return ok({"status": "ok"}, "ok")


async def ready(request: Request) -> Response:
    """Readiness: the broker answers a metadata request. While the workers' backlog is over
    its bound the ingress stays ready (reads are served; every ingress shares the backlog, so
    none is better to route to) and says that uploads are refused, and why."""
    gateway: KafkaGateway = ingress_of(request).kafka
    if not await gateway.ready():
        return ApiError(503, "Kafka is not reachable").response()
    admission: Admission = ingress_of(request).admission
    bound = ingress_of(request).settings.max_backlog_records
    over = admission.overloaded()
    if over is None:
        return ok({"status": "ready", "uploads": "accepted", "backlogRecords": admission.backlog(),
                   "maxBacklogRecords": bound}, "ready")
    backlog, drain_s = over
    return ok({"status": "ready", "uploads": "refused", "backlogRecords": backlog, "maxBacklogRecords": bound,
               "reason": f"{backlog} records wait for the workers, more than {bound} (REACH_MAX_BACKLOG_RECORDS): "
                         f"uploads are answered 503 until the backlog drains (about {math.ceil(drain_s)} s); "
                         "reads are served"}, "ready; uploads refused")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def kafka_unreachable(request: Request, exc: Exception) -> Response:
    """A read that must first catch up with Kafka, while the broker does not answer."""
    log.warning("%s %s: Kafka did not answer in time (%r)", request.method, request.url.path, exc)
    if request.url.path.startswith(schema_registry.PREFIX + "/"):
        return schema_registry.RegistryError(503, schema_registry.TIMED_OUT,
                                             "Kafka is not reachable; retry later").response()
    return ApiError(503, "Kafka is not reachable; retry later").response()


async def reader_unavailable(request: Request, exc: Exception) -> Response:
    """A read whose reader (`state.reader`) did not answer: the client may retry shortly."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    response = ApiError(503, "this cannot be read at the moment (a reader does not answer); "
                             "retry shortly").response()
    response.headers["Retry-After"] = str(ReaderUnavailable.retry_after_s)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith(schema_registry.PREFIX + "/"):
        return schema_registry.http_error(request, exc)
    headers = exc.headers
    if exc.status_code == 405:
        # RFC 9110: a 405 names every allowed method, also those of other routes of the path
        # (Starlette names only the first route's).
        allowed = {m for route in request.app.routes if isinstance(route, Route)
                   and route.matches(request.scope)[0] is not Match.NONE for m in route.methods or ()}
        headers = {"Allow": ", ".join(sorted(allowed))}
    return JSONResponse({"success": False, "message": exc.detail}, status_code=exc.status_code, headers=headers)


def ingress_state_dir(settings: Settings) -> Path:
    """Where this ingress keeps its read models on disk (one folder per ingress id)."""
    return settings.data_dir / "ingress" / settings.ingress_id


def claim_stale_s(settings: Settings) -> float:
    """How long an idempotency claim whose ingress died holds its key: until its batch surely
    can no longer commit (an upload commits within its produce timeout, or the broker aborts its
    transaction after the producers' transaction timeout, `ingest.publisher`), and 5 s more."""
    return settings.produce_timeout_s + TRANSACTION_TIMEOUT_S + 5


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ingress app; its Kafka clients start and stop with the app's lifespan."""
    settings = settings or Settings.from_env()
    topics = service_topics(settings)
    short = sorted(p for p, secret in settings.partner_secrets.items() if len(secret.encode()) < 32)
    if short:
        log.warning("partner secrets shorter than 32 bytes (weak for HS256): %s", ", ".join(short))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = ingress_of_app(app)
        state.kafka = KafkaGateway(settings)
        state.publisher = BatchPublisher(settings)
        # A request that must catch up with Kafka waits for it no longer than an upload does.
        wait_s = min(5.0, settings.produce_timeout_s)
        state.definitions = DefinitionView(settings.bootstrap_servers, topics.schema_definitions.name, wait_s)
        state.subjects = Subjects(settings.bootstrap_servers, topics.schema_registry.name, wait_s)
        parts: list[Part] = [state.kafka, state.publisher, state.definitions, state.subjects]
        started: list[Part] = []
        try:
            # Opened inside the try: a store another process holds stops the start cleanly.
            folder = ingress_state_dir(settings)
            # Per batch, never per record: idempotency keys and the tenants' records quotas.
            state.ledger = BatchLedger(settings.bootstrap_servers, topics.batch_events.name, folder / "ledger", wait_s,
                                       retention_s=settings.batch_retention_days * 24 * 3600,
                                       idempotency_ttl_s=min(settings.idempotency_key_hours,
                                                             settings.batch_retention_days * 24) * 3600,
                                       claim_stale_s=claim_stale_s(settings),
                                       record_spacing_ms=record_spacing_ms(settings))
            parts.append(state.ledger)
            # Batches and their records' outcomes are read from the readers (`state.reader`).
            state.batches = BatchReads(settings.reader_urls, topics.batch_events.partitions, timeout_s=wait_s + 5)
            parts.append(state.batches)
            state.totals = ReaderTotals(state.batches)
            parts.append(state.totals)
            state.admission = Admission(settings, state.ledger, state.totals)
            state.claims = ClaimLog(settings.bootstrap_servers, topics.batch_events.name, state.ledger)
            parts.append(state.claims)
            # Resources are read from the readers (`state.reader`): the ingress keeps no copy.
            state.resources = ResourceReads(settings.reader_urls, topics.resources.partitions,
                                            timeout_s=wait_s + 5)
            parts.append(state.resources)
            for part in parts:
                await part.start()
                started.append(part)
            await state.subjects.publish(state.kafka.producer, topics.ingest.name)
            heap.settle()
            yield
        finally:
            for part in reversed(started):
                await part.stop()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/openapi.json", openapi),
            Route("/metrics", metrics),
            *schema_definitions.routes,
            *uploads.routes,
            *batch_status.routes,
            *batch_records.routes,
            *batch_progress.routes,
            *deletes.routes,
            *resource_reads.routes,
            *resource_writes.routes,
            Mount(schema_registry.PREFIX, routes=schema_registry.routes),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error,
                            schema_registry.RegistryError: schema_registry.registry_error,
                            TimeoutError: kafka_unreachable, KafkaError: kafka_unreachable,
                            ReaderUnavailable: reader_unavailable},
        middleware=[Middleware(MetricsMiddleware), Middleware(RateLimitHeaders)],
        lifespan=lifespan,
    )
    app.state.ingress = Ingress(settings, topics)
    return app
