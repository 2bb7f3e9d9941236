"""Single-resource writes: `POST /api/resources/{schema}`, `PATCH /api/resources/{schema}/{externalId}`
(docs/api.md 6a). Each is a one-record batch through the same pipeline as batch uploads; the
answer waits for the record's outcome up to `REACH_SYNC_WAIT_S`, else it is the batch's 202.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.batch_status import cascade_view, names
from ingest.context import ingress_of
from ingest.request_parsing import choice, json_object, parse_options, read_body
from ingest.resource_reads import resource_view
from ingest.responses import ApiError, ok
from ingest.uploads import accepted, check_records, find_definition, publish_batch
from schemas.batch_events import (
    ALREADY_EXISTS,
    NOT_FOUND,
    REFERENCED,
    SCHEMA_NOT_FOUND,
    BatchMeta,
)
from schemas.definitions import Definition
from schemas.events import Resource
from schemas.records import BatchOptions, external_id_of

# A failed record's code -> the status of the single-resource answer.
_STATUS_OF_CODE = {ALREADY_EXISTS: 409, REFERENCED: 409, NOT_FOUND: 404, SCHEMA_NOT_FOUND: 404}


def _data_of(body: bytes) -> dict[str, Any]:
    parsed = json_object(body, "a 'data' object")
    if not isinstance(parsed.get("data"), dict):
        raise ApiError(400, "the body must be an object with a 'data' object")
    return parsed["data"]


def _checked(data: dict[str, Any], definition: Definition, options: BatchOptions,
             problems: list[str]) -> dict[str, Any]:
    checked, record_problems = check_records([data], definition, options)
    about_data = [p.replace("resources[0]", "data", 1) for p in record_problems]
    if problems or about_data:
        raise ApiError(400, "; ".join(problems) if problems else "the resource is not valid; nothing was enqueued",
                       about_data or None)
    return checked[0]


async def _outcome(request: Request, meta: BatchMeta, external_id: str) -> Resource | None:
    """The written resource once its record succeeded; None if its outcome is not known in
    time; ApiError if it failed."""
    state = ingress_of(request)
    batch = await state.batches.outcome(meta.partnerId, meta.tenantId, meta.batchId, state.settings.sync_wait_s)
    if batch is None:
        return None
    if batch.failed:
        detail = batch.details.get(0, {})  # the outcome comes with its details
        code = detail.get("code") or "FAILED"
        message = (detail.get("message") or code).replace("resources[0]", "data", 1)
        raise ApiError(_STATUS_OF_CODE.get(code, 400), message, [message], data={"batchId": meta.batchId, "code": code})
    return await state.resources.get(meta.partnerId, meta.tenantId, meta.schemaDefinitionId, external_id)


async def create(request: Request) -> Response:
    """`POST /api/resources/{schema}`: create (or merge, with onconflict=upsert) one resource."""
    options, problems = parse_options(request.query_params, with_wait=False)
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    data = _data_of(await read_body(request, state.settings.max_body_bytes))
    record = _checked(data, definition, options, problems)
    external_id = external_id_of(record, definition) or ""
    meta = await publish_batch(request, principal.partner_id, principal.tenant_id, definition,
                               [(external_id, record)], options.on_conflict, options)
    resource = await _outcome(request, meta, external_id)
    if resource is None:
        return accepted(meta)
    return ok(resource_view(resource), "Resource saved")


async def patch(request: Request) -> Response:
    """`PATCH /api/resources/{schema}/{externalId}`: merge into an existing resource."""
    options, problems = parse_options(request.query_params, with_conflict=False, with_wait=False)
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    data = _data_of(await read_body(request, state.settings.max_body_bytes))
    external_id = request.path_params["external_id"]
    field = definition.externalIdField
    if field in data and external_id_of(data, definition) != external_id:
        raise ApiError(400, f"data.{field} names {data[field]!r}, not the path's {external_id!r}")
    if field not in data:  # the path names it; typed as the schema says
        typed = (definition.schema.get("properties", {}).get(field) or {}).get("type")
        is_int = typed == "integer" or (isinstance(typed, list) and "integer" in typed and "string" not in typed)
        digits = external_id.lstrip("-")
        numeric = is_int and digits.isascii() and digits.isdigit()
        data = {**data, field: int(external_id) if numeric else external_id}
    record = _checked(data, definition, options, problems)
    meta = await publish_batch(request, principal.partner_id, principal.tenant_id, definition,
                               [(external_id, record)], "patch", options)
    resource = await _outcome(request, meta, external_id)
    if resource is None:
        return accepted(meta)
    return ok({"result": resource_view(resource), "included": []}, "Resource updated")


async def delete(request: Request) -> Response:
    """`DELETE /api/resources/{schema}/{externalId}`: delete one resource, unless referenced."""
    problems: list[str] = []
    cascade = choice(request.query_params, "cascade", ("true", "false"), "false", problems) == "true"
    if problems:
        raise ApiError(400, "; ".join(problems))
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    external_id = request.path_params["external_id"]
    meta = await publish_batch(request, principal.partner_id, principal.tenant_id, definition,
                               [(external_id, None)], "delete", cascade=cascade)
    batch = await state.batches.outcome(meta.partnerId, meta.tenantId, meta.batchId, state.settings.sync_wait_s)
    if batch is None:
        return accepted(meta)
    if batch.failed:
        await _outcome(request, meta, external_id)  # raises the record's error
    return ok({"resourceExternalId": external_id, "deleted": True,
               "cascade": cascade_view(batch, names(state, principal.partner_id))}, "Resource deleted")


routes = [
    Route("/api/resources/{schema}", create, methods=["POST"]),
    Route("/api/resources/{schema}/{external_id}", patch, methods=["PATCH"]),
    Route("/api/resources/{schema}/{external_id}", delete, methods=["DELETE"]),
]
