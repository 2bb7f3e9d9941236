"""`GET /metrics` (Prometheus) of `reach ingress` with two processes and of a worker: the
counters move by exactly what a client did, whichever process answers, also after one of them
died — real processes on the session's broker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from reach.config import Settings
from schemas.events import INGEST_HEADERS
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    alive,
    bearer,
    children_of,
    define_customer_and_order,
    partner_token,
    tenant_token,
    unique,
    wait_ingress_ready,
    wait_until,
)
from topics import service_topics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UPLOAD_ROUTE = "/api/resources/{schema}/batch"


def scrape(url: str) -> Samples:
    """Every sample of `url`/metrics, by name and labels (a new connection: any process may answer)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def supervisor(settings: Settings, tmp_path: Path, reader: object) -> Iterator[ServiceProcess]:
    process = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress"),
                                                              ingress_processes=2),
                             tmp_path / "ingress.log").start()
    try:
        wait_ingress_ready(settings)
        wait_until(lambda: len(children_of(process.proc.pid)) == 2, 60, what="two ingress processes")
        yield process
    finally:
        process.stop()


def test_counters_move_by_exactly_the_records_of_the_batches(
        settings: Settings, supervisor: ServiceProcess, worker: ServiceProcess) -> None:
    base = f"http://127.0.0.1:{settings.http_port}"
    worker_url = f"http://127.0.0.1:{settings.worker_web_port}"
    response = httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner_token()), timeout=30,
                          json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
    assert response.status_code == 200, response.text
    headers = bearer(tenant_token())
    ingress_before, worker_before = scrape(base), scrape(worker_url)

    # 8 uploads of 125 records on new connections (both processes take some); 2 per upload
    # lack their required name and fail in the worker.
    batch_ids = []
    for n in range(8):
        records = [{"id": f"m{n}-{i}", **({} if i < 2 else {"name": "x"})} for i in range(125)]
        response = httpx.post(f"{base}{UPLOAD_ROUTE.replace('{schema}', 'customer')}", json={"resources": records},
                              headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        batch_ids.append(response.json()["data"]["batchId"])
    for batch_id in batch_ids:
        status = wait_until(lambda: _terminal(base, batch_id, headers), 60, what=f"batch {batch_id} terminal")
        assert status == "partial_success", status

    # One process dies and is started again: what it counted still counts, whichever answers.
    killed = children_of(supervisor.proc.pid)[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: not alive(killed), 10, what="the killed process to die")
    wait_until(lambda: len(children_of(supervisor.proc.pid)) == 2 and killed not in children_of(supervisor.proc.pid),
               60, what="the killed process to be replaced")
    wait_ingress_ready(settings)
    for _ in range(4):
        after = scrape(base)
        assert moved(ingress_before, after, "reach_records_accepted_total", operation="upsert") == 1000
        assert moved(ingress_before, after, "reach_batches_accepted_total", operation="upsert") == 8
        assert moved(ingress_before, after, "reach_http_requests_total", route=UPLOAD_ROUTE, method="POST",
                     status="202") == 8
        assert moved(ingress_before, after, "reach_http_request_duration_seconds_count", route=UPLOAD_ROUTE,
                     method="POST", status="202") == 8
        assert value(after, "reach_records_pending") == 0
        assert value(after, "reach_backlog_records") == 0, "every record has its outcome"

    worker_after = scrape(worker_url)
    assert moved(worker_before, worker_after, "reach_records_applied_total", outcome="created", code="") == 984
    assert moved(worker_before, worker_after, "reach_records_applied_total", outcome="failed",
                 code="VALIDATION_FAILED") == 16
    assert moved(worker_before, worker_after, "reach_record_latency_seconds_count") == 1000
    assert moved(worker_before, worker_after, "reach_commits_total") >= 1
    assert value(worker_after, "reach_rebalances_total") >= 1
    assert value(worker_after, "reach_assigned_partitions") == settings.topic_partitions
    lags = {p: value(worker_after, "reach_ingest_consumer_lag", partition=str(p))
            for p in range(settings.topic_partitions)}
    # Everything is applied: what is left are at most the commit markers after the last messages.
    assert all(0 <= lag <= 1 for lag in lags.values()), lags
    assert all(("reach_ingest_consumer_lag", frozenset({("partition", str(p))})) in worker_after
               for p in range(settings.topic_partitions)), "a lag per owned partition"


def _terminal(base: str, batch_id: str, headers: dict[str, str]) -> str | None:
    data = httpx.get(f"{base}/api/batches/{batch_id}", headers=headers, timeout=10).json()["data"]
    return data["status"] if data["status"] in ("success", "partial_success", "failed") else None


def test_pending_records_and_dead_letters_are_counted(settings: Settings, supervisor: ServiceProcess,
                                                      worker: ServiceProcess) -> None:
    base = f"http://127.0.0.1:{settings.http_port}"
    worker_url = f"http://127.0.0.1:{settings.worker_web_port}"
    define_customer_and_order(base)
    headers = bearer(tenant_token())
    worker_before = scrape(worker_url)

    response = httpx.post(f"{base}/api/resources/Order/batch", params={"dependencyWaitTimeout": "300"},
                          json={"resources": [{"id": "o-1", "customer": "c-1"}, {"id": "o-2", "customer": "c-2"}]},
                          headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    wait_until(lambda: value(scrape(base), "reach_records_pending") == 2, 60, what="2 records pending",
               seen=lambda: value(scrape(base), "reach_records_pending"))
    response = httpx.post(f"{base}/api/resources/Customer/batch", headers=headers, timeout=30,
                          json={"resources": [{"id": "c-1", "name": "A"}, {"id": "c-2", "name": "B"}]})
    assert response.status_code == 202, response.text
    wait_until(lambda: value(scrape(base), "reach_records_pending") == 0, 60, what="none pending",
               seen=lambda: value(scrape(base), "reach_records_pending"))

    async def produce_garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(service_topics(settings).ingest.name, b"\x00\xffnot avro", key=b"k",
                                         headers=list(INGEST_HEADERS))
        finally:
            await producer.stop()

    asyncio.run(produce_garbage())
    wait_until(lambda: moved(worker_before, scrape(worker_url), "reach_dead_letters_total") == 1, 60,
               what="one dead letter counted")
    worker_after = scrape(worker_url)
    assert moved(worker_before, worker_after, "reach_records_applied_total", outcome="created", code="") == 4
