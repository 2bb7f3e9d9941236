"""Every record's outcome of a batch: `GET /api/batches/{batchId}/records`.

A page (`?status=succeeded|failed|pending&cursor=&limit=`, records in index order) is one seek
in the batch store at any depth; with `Accept: application/x-ndjson` the answer streams all of
them, a JSON object per line. Both are served while the batch is processing: a record the
workers have not reached yet is not listed until it has an outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.context import ingress_of
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.request_parsing import choice
from ingest.responses import ApiError, iso_ms, ok
from state.batch_state import BatchState
from state.batch_store import RECORD_STATUSES
from state.remote import BatchReads

NDJSON = "application/x-ndjson"
_STREAM_CHUNK = 1000  # records per chunk of a streamed answer; the event loop serves others between chunks


def record_view(record: dict[str, Any]) -> dict[str, Any]:
    """A record's outcome as the API answers it (times in ISO 8601)."""
    if record.get("expiresAt") is not None:
        record = {**record, "expiresAt": iso_ms(record["expiresAt"] / 1000)}
    return record


def _total(batch: BatchState, status: str | None) -> int:
    """How many records of the batch have an outcome of `status` (None: any)."""
    by_status = {"succeeded": batch.successful, "failed": batch.failed, "pending": batch.pending}
    return sum(by_status.values()) if status is None else by_status[status]


def _cursor_index(cursor: str | None) -> int:
    """The record index a cursor points after (-1: from the first record)."""
    position = decode_cursor(cursor)
    if position is None:
        return -1
    if not (position.isascii() and position.isdigit()):
        raise ApiError(400, "cursor is not a cursor of this list")
    return int(position)


async def batch_records(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    query = request.query_params
    problems: list[str] = []
    status = choice(query, "status", RECORD_STATUSES, None, problems)
    if problems:
        raise ApiError(400, "; ".join(problems))
    streamed = NDJSON in request.headers.get("accept", "")
    limit = None if streamed else page_limit(query, default=100, maximum=1000)
    after = _cursor_index(query.get("cursor"))
    batch = await state.batches.find(principal.partner_id, principal.tenant_id, request.path_params["batch_id"],
                                     details=False)
    if batch is None:
        raise ApiError(404, "Batch not found")
    reads: BatchReads = state.batches
    if limit is None:
        return StreamingResponse(_ndjson(reads, batch, status, after), media_type=NDJSON)
    records, has_next = await reads.records(batch.partnerId, batch.tenantId, batch.batchId, status, after, limit)
    found = [record_view(r) for r in records]
    return ok({
        "results": found,
        "pagination": {"hasNextPage": has_next, "total": _total(batch, status),
                       "cursor": encode_cursor(str(found[-1]["index"])) if has_next else None},
    })


async def _ndjson(reads: BatchReads, batch: BatchState, status: str | None, after: int) -> AsyncIterator[bytes]:
    """Every record outcome after index `after`, asked of the batch's reader a chunk at a time."""
    more = True
    while more:
        chunk, more = await reads.records(batch.partnerId, batch.tenantId, batch.batchId, status, after,
                                          _STREAM_CHUNK)
        if not chunk:
            return
        after = chunk[-1]["index"]
        yield b"\n".join(orjson.dumps(record_view(r)) for r in chunk) + b"\n"


routes = [Route("/api/batches/{batch_id}/records", batch_records, methods=["GET"])]
