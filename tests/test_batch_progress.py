"""Live progress: `GET /api/batches/{id}/events` is a Server-Sent Events stream that a client
follows, drops and resumes with Last-Event-ID — read over HTTP from a real ingress process,
with a real worker on the session's broker."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from reach.config import Settings
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    bearer,
    define_customer_and_order,
    partner_token,
    tenant_token,
    unique,
    wait_ingress_ready,
    wait_until,
)

Event = dict[str, Any]  # event, id, data


@pytest.fixture
def ingress_process(settings: Settings, tmp_path: Path, reader: object) -> Iterator[ServiceProcess]:
    process = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress")),
                             tmp_path / "ingress.log").start()
    try:
        wait_ingress_ready(settings)
        yield process
    finally:
        process.stop()


@pytest.fixture
def base(settings: Settings, ingress_process: ServiceProcess) -> str:
    return f"http://127.0.0.1:{settings.http_port}"


def upload(base: str, schema: str, records: list[dict[str, Any]], **query: str) -> str:
    response = httpx.post(f"{base}/api/resources/{schema}/batch", json={"resources": records}, params=query,
                          headers=bearer(tenant_token()), timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["data"]["batchId"]


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of an open event stream as they arrive (comments and `retry` skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in fields:
                yield {"event": fields["event"], "id": int(fields["id"]), "data": orjson.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def follow(base: str, batch_id: str, until: Any, last_event_id: int | None = None) -> list[Event]:
    """Open the stream (resuming after `last_event_id`) and read events until `until(event)`."""
    headers = {**bearer(tenant_token()), **({"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {})}
    seen: list[Event] = []
    with httpx.stream("GET", f"{base}/api/batches/{batch_id}/events", headers=headers,
                      timeout=httpx.Timeout(10, read=60)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        for event in events(response):
            seen.append(event)
            if until(event):
                return seen
    raise AssertionError(f"the stream ended before the awaited event; saw {seen}")


def test_progress_streams_live_resumes_with_last_event_id_and_ends_with_completed(
        base: str, worker: ServiceProcess) -> None:
    define_customer_and_order(base)
    headers = bearer(tenant_token())
    # o-1 waits for its customer; o-2 applies at once.
    batch_id = upload(base, "Order", [{"id": "o-1", "customer": "c-1"}, {"id": "o-2"}], dependencyWaitTimeout="300")
    first = follow(base, batch_id, lambda e: e["data"]["progress"]["pendingRecords"] == 1
                   and e["data"]["progress"]["processedRecords"] == 1)
    assert all(e["event"] == "progress" for e in first), first
    assert [e["id"] for e in first] == sorted({e["id"] for e in first}), "ids grow with every event"
    waiting = first[-1]
    assert waiting["data"]["batchId"] == batch_id and waiting["data"]["status"] == "processing", waiting

    # Dropped; meanwhile the customer arrives. Resuming sends only what is newer, to the end.
    upload(base, "Customer", [{"id": "c-1", "name": "Ann"}])
    rest = follow(base, batch_id, lambda e: e["event"] == "completed", last_event_id=waiting["id"])
    assert all(e["id"] > waiting["id"] for e in rest), (waiting, rest)
    completed = rest[-1]
    assert completed["data"]["status"] == "success", completed
    assert completed["data"]["progress"]["successfulRecords"] == 2 and completed["data"]["errors"]["summary"] == {}

    # A client that saw `completed` is told there is nothing more (204 ends EventSource's retries);
    # one that did not gets `completed` again at once.
    response = httpx.get(f"{base}/api/batches/{batch_id}/events",
                         headers={**headers, "Last-Event-ID": str(completed["id"])}, timeout=30)
    assert response.status_code == 204, response.text
    again = follow(base, batch_id, lambda e: e["event"] == "completed")
    assert [e["event"] for e in again] == ["completed"] and again[0]["id"] == completed["id"], again


def test_events_of_an_unknown_or_foreign_batch_are_not_found(settings: Settings, base: str) -> None:
    response = httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner_token()), timeout=30,
                          json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
    assert response.status_code == 200, response.text
    response = httpx.post(f"{base}/api/resources/Customer/batch", json={"resources": [{"id": "a", "name": "A"}]},
                          headers=bearer(tenant_token()), timeout=30)
    batch_id = response.json()["data"]["batchId"]
    for tenant, batch in (("tenant-2", batch_id), ("tenant-1", unique("no-such-batch"))):
        response = httpx.get(f"{base}/api/batches/{batch}/events", headers=bearer(tenant_token(tenant=tenant)),
                             timeout=30)
        assert response.status_code == 404, (tenant, response.text)


def test_a_stopping_ingress_ends_the_streams_it_serves_in_bounded_time(
        settings: Settings, ingress_process: ServiceProcess, base: str, worker: ServiceProcess) -> None:
    define_customer_and_order(base)
    batch_id = upload(base, "Order", [{"id": "o-1", "customer": "c-1"}], dependencyWaitTimeout="300")
    received: list[Event] = []
    ended = threading.Event()

    def client() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off mid-stream is what is expected
            with httpx.stream("GET", f"{base}/api/batches/{batch_id}/events", headers=bearer(tenant_token()),
                              timeout=httpx.Timeout(10, read=120)) as response:
                for event in events(response):
                    received.append(event)
        ended.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    wait_until(lambda: received, 30, what="the first event", seen=lambda: received)
    started = time.monotonic()
    code = ingress_process.stop(timeout_s=60)
    took = time.monotonic() - started
    # An open stream never ends by itself (the batch waits 300 s): the ingress ends it when it
    # stops, at once, instead of waiting for it until its graceful timeout. (uvicorn ends by
    # raising the signal it caught again: SIGTERM.)
    log = ingress_process.log()
    assert code in (0, -signal.SIGTERM) and took < 5, (code, took, log[-2000:])
    assert "graceful shutdown exceeded" not in log and "Traceback" not in log, log[-3000:]
    assert ended.wait(10), "the client's stream did not end with the ingress"
