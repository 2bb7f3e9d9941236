"""The ingress's Prometheus metrics, served at `GET /metrics`.

HTTP requests and their duration by route template, method and status; records and batches
accepted by operation; records pending on their references (from the batch status table, as
`GET /api/batches` reports them). No label names a tenant or a batch.

Several processes of one `reach ingress` add up: the supervisor gives them a shared folder
(`PROMETHEUS_MULTIPROC_DIR`, `prometheus_client`'s multiprocess mode), and any of them answers
with the sum of all, counters of processes that died and were started again included.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.context import Ingress, ingress_of

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"  # the route label of a path no route serves (not the path: unbounded)

HTTP_REQUESTS = Counter("reach_http_requests", "HTTP requests answered", ["route", "method", "status"])
HTTP_DURATION = Histogram("reach_http_request_duration_seconds",
                          "From a request's arrival to the end of its answer (event streams: their whole life)",
                          ["route", "method", "status"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
RECORDS_ACCEPTED = Counter("reach_records_accepted", "Records accepted for processing (answered 202)",
                           ["operation"])
BATCHES_ACCEPTED = Counter("reach_batches_accepted", "Batches accepted for processing (answered 202)",
                           ["operation"])


def prepare_multiprocess(folder: Path) -> None:
    """Make `folder` the shared metrics folder of the processes started from now on (emptied:
    counters start at zero with the ingress)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR] = str(folder)


def process_exited(pid: int) -> None:
    """Forget the live gauges of a process that exited (its counters still count)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)


def accepted(operation: str, records: int) -> None:
    RECORDS_ACCEPTED.labels(operation).inc(records)
    BATCHES_ACCEPTED.labels(operation).inc()


class MetricsMiddleware:
    """Counts and times every HTTP request by its route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = route_template(scope)
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            HTTP_DURATION.labels(route, scope["method"], str(status)).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that serves `scope` (also when only its method differs)."""
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


class _StateCollector:
    """Figures of the readers' latest totals (`state.remote.ReaderTotals`) at each scrape."""

    def __init__(self, state: Ingress) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("reach_records_pending",
                                "Records waiting for the resources they reference (as the batch status reports them)",
                                value=self.state.totals.pending())
        yield GaugeMetricFamily("reach_backlog_records",
                                "Records accepted that no worker has taken yet (what REACH_MAX_BACKLOG_RECORDS bounds)",
                                value=self.state.totals.backlog())


async def metrics(request: Request) -> Response:
    await ingress_of(request).totals.refresh(timeout_s=1.0)  # the readers' figures as of now, if they answer
    registry = CollectorRegistry()
    registry.register(_StateCollector(ingress_of(request)))
    if os.environ.get(MULTIPROCESS_DIR):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)
        body = generate_latest(shared)
    else:
        body = generate_latest(REGISTRY)
    return Response(body + generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
