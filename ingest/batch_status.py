"""Batch status, `GET /api/batches` and `GET /api/batches/{batch_id}` (docs/api.md 5)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.context import Ingress, ingress_of
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.request_parsing import choice, flag
from ingest.responses import ApiError, iso_ms, ok
from schemas.batch_events import BATCH_TYPES, DELETE_BATCH
from state.batch_state import STATUSES, BatchState


def batch_view(batch: BatchState, name_of: Any, include_pending: bool = False) -> dict[str, Any]:
    """A batch as `GET /api/batches/{id}` answers it."""
    total = batch.recordCount
    schema_name = name_of(batch.schemaDefinitionId)
    view: dict[str, Any] = {
        "batchId": batch.batchId, "status": batch.status, "batchType": batch.batchType,
        "progress": {
            "totalRecords": total, "processedRecords": batch.processed,
            "successfulRecords": batch.successful, "pendingRecords": batch.pending,
            "failedRecords": batch.failed,
            "successRate": round(batch.successful / total * 100, 2) if total else 0.0,
        },
        "createdAt": iso_ms(batch.acceptedAt / 1000),
        "startedAt": iso_ms(batch.startedAt / 1000) if batch.startedAt else None,
        "completedAt": iso_ms(batch.completedAt / 1000) if batch.completedAt else None,
        "schemaName": schema_name, "schemaDefinitionId": batch.schemaDefinitionId,
        "errors": {
            "summary": dict(batch.summary),
            "details": {str(i): d for i, d in sorted(batch.details.items())},
            "message": f"{batch.failed} of {total} records failed" if batch.failed else None,
        },
    }
    if batch.batchType == DELETE_BATCH and batch.processed == total:
        view["cascade"] = cascade_view(batch, name_of)
    if include_pending:
        view["pendingResources"] = [pending_view(e, batch.schemaDefinitionId, schema_name, name_of)
                                    for _, e in sorted(batch.pending_details.items())]
    return view


def cascade_view(batch: BatchState, name_of: Any) -> dict[str, Any]:
    """What a delete batch's cascade deleted beside the resources it named (docs/api.md 6a)."""
    by_schema: Counter[str] = Counter()
    for definition_id, n in batch.cascade.items():
        by_schema[name_of(definition_id) or definition_id] += n
    by_schema = +by_schema  # a named resource a cascade reached first counts -1 then +1: drop zeros
    return {"deletedRecords": sum(by_schema.values()), "bySchema": dict(by_schema)}


def pending_view(event: dict[str, Any], schema_definition_id: str, schema_name: str | None,
                 name_of: Any) -> dict[str, Any]:
    return {
        "resourceExternalId": event.get("externalId"), "schemaDefinitionId": schema_definition_id,
        "schemaName": schema_name, "expiresAt": iso_ms(event["expiresAt"] / 1000) if event.get("expiresAt") else None,
        "createdAt": iso_ms(event["at"] / 1000) if event.get("at") else None,
        "missingDependencies": [{"schemaDefinitionId": d["schemaDefinitionId"],
                                 "schemaName": name_of(d["schemaDefinitionId"]), "externalId": d["externalId"]}
                                for d in event.get("missingDependencies", [])],
    }


def names(state: Ingress, partner_id: str) -> Callable[[str], str | None]:
    """Definition id -> name, for the partner's definitions (deactivated ones too)."""
    def name_of(definition_id: str) -> str | None:
        definition = state.definitions.get(partner_id, definition_id)
        return definition.name if definition else None
    return name_of


async def get_batch(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    problems: list[str] = []
    include = flag(request.query_params, "includePendingDetails", problems)
    if problems:
        raise ApiError(400, "; ".join(problems))
    batch_id = request.path_params["batch_id"]
    batch = await state.batches.find(principal.partner_id, principal.tenant_id, batch_id)
    if batch is None:
        raise ApiError(404, "Batch not found")
    return ok(batch_view(batch, names(state, principal.partner_id), include))


async def list_batches(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    query = request.query_params
    limit = page_limit(query)
    cursor = decode_cursor(query.get("cursor"))
    problems: list[str] = []
    batch_type = choice(query, "batchType", BATCH_TYPES, None, problems)
    status = choice(query, "status", STATUSES, None, problems)
    if problems:
        raise ApiError(400, "; ".join(problems))
    chosen, total, has_next = await state.batches.page(principal.partner_id, principal.tenant_id, cursor, limit,
                                                 batch_type, status)
    return ok({
        "results": [batch_view(b, names(state, principal.partner_id)) for b in chosen],
        "pagination": {"hasNextPage": has_next, "total": total,
                       "cursor": encode_cursor(chosen[-1].batchId) if has_next and chosen else None},
    })


routes = [
    Route("/api/batches", list_batches, methods=["GET"]),
    Route("/api/batches/{batch_id}", get_batch, methods=["GET"]),
]
