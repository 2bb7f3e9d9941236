"""Live progress of a batch without polling: `GET /api/batches/{batchId}/events` (Server-Sent Events).

The stream sends a `progress` event at once and whenever the batch's counts change (at most
one per fetch of the batch-events topic), then a `completed` event with the whole batch (as
`GET /api/batches/{id}` answers it) when it is terminal, and ends. Each event's id is the
batch's version, a number that grows with every change, so a client that reconnects with
`Last-Event-ID` gets only what it has not seen; one that has seen `completed` gets 204, which
tells an EventSource to stop reconnecting. A comment every `HEARTBEAT_S` keeps idle
connections (and proxies) open.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.batch_status import batch_view, names
from ingest.context import Ingress, ingress_of
from ingest.responses import ApiError
from state.batch_state import BatchState
from state.remote import BatchReads

EVENT_STREAM = "text/event-stream"
HEARTBEAT_S = 15.0
POLL_S = 1.0  # the longest a stream waits for its reader at a time
RETRY_MS = 2000  # how long a client waits before it reconnects


def _terminal(batch: BatchState) -> bool:
    return batch.processed == batch.recordCount


def _event(name: str, event_id: int, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\nid: " + str(event_id).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else -1  # anything else: from the start


async def batch_events(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    batch_id = request.path_params["batch_id"]
    batch = await state.batches.find(principal.partner_id, principal.tenant_id, batch_id, details=False)
    if batch is None:
        raise ApiError(404, "Batch not found")
    seen = _last_event_id(request)
    if _terminal(batch) and seen >= batch.version:
        return Response(status_code=204)  # it saw `completed`: nothing more will come
    name_of = names(state, principal.partner_id)
    return StreamingResponse(_stream(state, principal.partner_id, principal.tenant_id, batch_id, seen, name_of),
                             media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(state: Ingress, partner_id: str, tenant_id: str, batch_id: str, seen: int,
                  name_of: Callable[[str], str | None]) -> AsyncIterator[bytes]:
    reads: BatchReads = state.batches
    yield f"retry: {RETRY_MS}\n\n".encode()
    quiet_since = time.monotonic()
    batch = await reads.find(partner_id, tenant_id, batch_id, wait_s=0, details=False)
    while not state.stopping:  # a stopping ingress ends its streams; clients resume elsewhere
        if batch is None:  # expired meanwhile (retention)
            return
        current = batch.version
        if _terminal(batch):
            full = await reads.find(partner_id, tenant_id, batch_id, wait_s=0)
            yield _event("completed", current, batch_view(full or batch, name_of))
            return
        if current > seen:
            view = batch_view(batch, name_of)
            yield _event("progress", current, {"batchId": batch_id, "status": view["status"],
                                               "progress": view["progress"]})
            seen, quiet_since = current, time.monotonic()
        # The reader answers once the batch has changed, or after a second (a stopping ingress
        # notices within it).
        batch = await reads.changed(partner_id, tenant_id, batch_id, seen, POLL_S)
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()


routes = [Route("/api/batches/{batch_id}/events", batch_events, methods=["GET"])]
