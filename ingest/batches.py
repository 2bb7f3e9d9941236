"""Batch upload and batch status: `/api/resources/{schema}/batch`, `/api/batches` (API.md 4, 5)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import tenant_principal
from state.batches import BatchState
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.publisher import Message, PublishError
from ingest.responses import ApiError, iso_ms, ok
from schemas.batch_events import BatchMeta, registration
from schemas.definitions import Definition
from schemas.events import build_ingest_batch
from schemas.records import MAX_RECORDS, MAX_WAIT_S, ON_CONFLICT, BatchOptions, check_record, external_id_of
from schemas.validation import validators_for
from topics.definitions import ServiceTopics

BATCH_TYPE = "PARTNER_RESOURCE_JSON_INGEST"


def parse_options(query: QueryParams) -> tuple[BatchOptions, list[str]]:
    """The upload's options and every problem with the query values."""
    problems = []
    on_conflict = query.get("onconflict") or "upsert"
    if on_conflict not in ON_CONFLICT:
        problems.append(f"onconflict must be one of {', '.join(ON_CONFLICT)} (got {on_conflict!r})")
    ignore_raw = query.get("ignoreUnknownFields") or "false"
    if ignore_raw not in ("true", "false"):
        problems.append(f"ignoreUnknownFields must be true or false (got {ignore_raw!r})")
    wait_raw = query.get("dependencyWaitTimeout") or "0"
    wait = int(wait_raw) if wait_raw.isdigit() else -1
    if not 0 <= wait <= MAX_WAIT_S:
        problems.append(f"dependencyWaitTimeout must be an integer from 0 to {MAX_WAIT_S} (got {wait_raw!r})")
    return BatchOptions(on_conflict, ignore_raw == "true", max(wait, 0)), problems


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _resources_of(body: bytes) -> tuple[list[Any] | None, str | None]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, "the body is not valid JSON"
    if not isinstance(parsed, dict) or "resources" not in parsed:
        return None, "the body must be an object with a 'resources' array"
    resources = parsed["resources"]
    if not isinstance(resources, list):
        return None, "'resources' must be an array"
    if not resources:
        return None, "'resources' must not be empty"
    if len(resources) > MAX_RECORDS:
        return None, f"'resources' has {len(resources)} items; at most {MAX_RECORDS} are allowed"
    return resources, None


def schema_not_found(name: str) -> ApiError:
    message = f"Schema definition '{name}' not found"
    return ApiError(404, "Schema definition not found", data={"error": message})


async def upload(request: Request) -> Response:
    state = request.app.state
    principal = tenant_principal(request, state.settings.partner_secrets)
    name = request.path_params["schema"]
    definition = await state.registry.find_fresh(principal.partner_id, name)
    if definition is None:
        raise schema_not_found(name)
    body = await read_body(request, state.settings.max_body_bytes)
    options, request_problems = parse_options(request.query_params)
    resources, body_problem = _resources_of(body)
    if body_problem:
        request_problems.append(body_problem)
    record_problems: list[str] = []
    checked: list[dict[str, Any]] = []
    if resources is not None:
        validators = validators_for(definition.id, definition.versionNumber, definition.schema)
        for index, raw in enumerate(resources):
            record, problems = check_record(index, raw, definition, validators, options)
            record_problems.extend(problems)
            if record is not None:
                checked.append(record)
    if request_problems or record_problems:
        message = "; ".join(request_problems) if request_problems else (
            f"{len(record_problems)} problem(s) in the submitted resources; nothing was enqueued")
        raise ApiError(400, message, record_problems or None)
    meta = BatchMeta(str(uuid.uuid4()), principal.partner_id, principal.tenant_id or "", definition.id,
                     len(checked), int(time.time() * 1000))
    try:
        await state.publisher.publish(batch_messages(state.topics, meta, definition, checked, options))
    except PublishError as exc:
        if exc.committing:  # the broker went silent while confirming the commit
            raise ApiError(503, f"Kafka did not confirm the batch in time; it may or may not have been accepted: "
                                f"GET /api/batches/{meta.batchId} tells ({exc})",
                           data={"batchId": meta.batchId}) from None
        raise ApiError(503, f"The batch could not be stored durably, nothing was accepted; retry later ({exc})") from None
    state.batches.add(meta)  # this ingress answers for it at once
    return ok({"batchId": meta.batchId, "message": "Batch accepted for processing", "recordCount": len(checked),
               "schemaDefinitionId": definition.id}, "Batch accepted", status=202)


def batch_messages(topics: ServiceTopics, meta: BatchMeta, definition: Definition,
                   records: list[dict[str, Any]], options: BatchOptions) -> list[Message]:
    """The batch's registration and one ingest event per record, ready to publish."""
    batch_id, partner_id, tenant_id = meta.batchId, meta.partnerId, meta.tenantId
    batch = build_ingest_batch(
        partner_id, tenant_id, definition.id,
        [(external_id_of(r, definition) or "", r) for r in records],  # ids were checked above
        schema_version=definition.versionNumber, on_conflict=options.on_conflict,
        ignore_unknown_fields=options.ignore_unknown_fields,
        dependency_wait_timeout=options.dependency_wait_timeout, batch_id=batch_id, accepted_at=meta.acceptedAt)
    messages: list[Message] = [(topics.batch_events.name, batch_id.encode(), registration(meta), None)]
    messages.extend((topics.ingest.name, key, value, batch.headers) for key, value in batch.messages)
    return messages


def batch_view(batch: BatchState, name_of: Any, include_pending: bool = False) -> dict[str, Any]:
    """A batch as `GET /api/batches/{id}` answers it."""
    total = batch.recordCount
    schema_name = name_of(batch.schemaDefinitionId)
    view: dict[str, Any] = {
        "batchId": batch.batchId, "status": batch.status, "batchType": BATCH_TYPE,
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
    if include_pending:
        view["pendingResources"] = [pending_view(e, batch.schemaDefinitionId, schema_name, name_of)
                                    for _, e in sorted(batch.pending_details.items())]
    return view


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


def _names(state: Any, partner_id: str) -> Any:
    """Definition id -> name, for the partner's definitions (deactivated ones too)."""
    def name_of(definition_id: str) -> str | None:
        definition = state.registry.get(partner_id, definition_id)
        return definition.name if definition else None
    return name_of


async def get_batch(request: Request) -> Response:
    state = request.app.state
    principal = tenant_principal(request, state.settings.partner_secrets)
    batch_id = request.path_params["batch_id"]
    batch = await state.batches.find(principal.partner_id, principal.tenant_id, batch_id)
    if batch is None:
        raise ApiError(404, "Batch not found")
    include = request.query_params.get("includePendingDetails", "false") == "true"
    return ok(batch_view(batch, _names(state, principal.partner_id), include))


async def list_batches(request: Request) -> Response:
    state = request.app.state
    principal = tenant_principal(request, state.settings.partner_secrets)
    limit = page_limit(request.query_params)
    cursor = decode_cursor(request.query_params.get("cursor"))
    await state.batches.sync()
    chosen, total, has_next = state.batches.page(principal.partner_id, principal.tenant_id, cursor, limit)
    return ok({
        "results": [batch_view(b, _names(state, principal.partner_id)) for b in chosen],
        "pagination": {"hasNextPage": has_next, "total": total,
                       "cursor": encode_cursor(chosen[-1].batchId) if has_next and chosen else None},
    })


routes = [
    Route("/api/resources/{schema}/batch", upload, methods=["POST"]),
    Route("/api/batches", list_batches, methods=["GET"]),
    Route("/api/batches/{batch_id}", get_batch, methods=["GET"]),
]
