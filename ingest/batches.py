"""Batch upload and batch status: `/api/resources/{schema}/batch`, `/api/batches` (docs/api.md 4, 5)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import answer_budget, idempotency, metrics, quotas
from ingest.auth import tenant_principal
from ingest.context import Ingress, ingress_of
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.publisher import Message, PublishError
from ingest.responses import ApiError, iso_ms, ok
from schemas.batch_events import BATCH_TYPES, DELETE_BATCH, BatchMeta, IdempotencyClaim, registration
from schemas.definitions import Definition
from schemas.events import BATCH_TYPE_OF_OP, build_ingest_batch
from schemas.records import MAX_RECORDS, MAX_WAIT_S, ON_CONFLICT, BatchOptions, check_record, external_id_of
from schemas.validation import validators_for
from state.batches import STATUSES, BatchState
from topics.definitions import ServiceTopics


def choice(query: QueryParams, name: str, allowed: tuple[str, ...], default: str | None,
           problems: list[str]) -> str | None:
    """A query value from `allowed`; absent → `default`; present but not allowed (empty
    included) → a problem, and `default`."""
    if name not in query:
        return default
    value = query[name]
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        return default
    return value


def flag(query: QueryParams, name: str, problems: list[str]) -> bool:
    return choice(query, name, ("true", "false"), "false", problems) == "true"


def parse_options(query: QueryParams, with_conflict: bool = True, with_wait: bool = True
                  ) -> tuple[BatchOptions, list[str]]:
    """The write's options and every problem with the query values (strict: an empty value is
    a problem, not the default)."""
    problems: list[str] = []
    on_conflict = choice(query, "onconflict", ON_CONFLICT, "upsert", problems) if with_conflict else "upsert"
    ignore = flag(query, "ignoreUnknownFields", problems)
    wait = 0
    if with_wait and "dependencyWaitTimeout" in query:
        wait_raw = query["dependencyWaitTimeout"]
        wait = int(wait_raw) if wait_raw.isascii() and wait_raw.isdigit() and len(wait_raw) <= 6 else -1
        if not 0 <= wait <= MAX_WAIT_S:
            problems.append(f"dependencyWaitTimeout must be an integer from 0 to {MAX_WAIT_S} (got {wait_raw!r})")
    return BatchOptions(on_conflict or "upsert", ignore, max(wait, 0)), problems


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    started = asyncio.get_running_loop().time()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    answer_budget.spent_on_client(request, asyncio.get_running_loop().time() - started)
    return b"".join(chunks)


def json_object(body: bytes, shape: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying it is not JSON or not `shape`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"the body must be an object with {shape}")
    return parsed


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
    """`POST /api/resources/{schema}/batch`: create or merge (docs/api.md 4)."""
    options, problems = parse_options(request.query_params)
    return await _write_batch(request, options.on_conflict, options, problems)


async def patch_batch(request: Request) -> Response:
    """`PATCH /api/resources/{schema}/batch`: merge into existing resources only (docs/api.md 6a)."""
    options, problems = parse_options(request.query_params, with_conflict=False, with_wait=False)
    return await _write_batch(request, "patch", options, problems)


async def _write_batch(request: Request, op: str, options: BatchOptions, request_problems: list[str]) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    quotas.describe(request, principal.partner_id, principal.tenant_id or "")
    definition = await find_definition(request, principal.partner_id)
    body = await read_body(request, state.settings.max_body_bytes)
    keyed = idempotency.keyed(request, body)
    replay = replay_if_accepted(request, principal.partner_id, principal.tenant_id or "", keyed)
    if replay is not None:
        return replay
    resources, body_problem = _resources_of(body)
    if body_problem:
        request_problems.append(body_problem)
    record_problems: list[str] = []
    checked: list[dict[str, Any]] = []
    if resources is not None:
        checked, record_problems = check_records(resources, definition, options)
    if request_problems or record_problems:
        message = "; ".join(request_problems) if request_problems else (
            f"{len(record_problems)} problem(s) in the submitted resources; nothing was enqueued")
        raise ApiError(400, message, record_problems or None)
    return await publish_accepted(request, keyed, principal.partner_id, principal.tenant_id or "", definition,
                                  [(external_id_of(r, definition) or "", r) for r in checked], op, options)


async def find_definition(request: Request, partner_id: str) -> Definition:
    """The active definition the path names, or 404."""
    name = request.path_params["schema"]
    definition = await ingress_of(request).registry.find_fresh(partner_id, name, answer_budget.seconds_left(request))
    if definition is None:
        raise schema_not_found(name)
    return definition


def check_records(resources: list[Any], definition: Definition, options: BatchOptions
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record as it will be enqueued, and every problem found (docs/api.md 4)."""
    validators = validators_for(definition.id, definition.versionNumber, definition.schema)
    checked: list[dict[str, Any]] = []
    found: list[str] = []
    for index, raw in enumerate(resources):
        record, problems = check_record(index, raw, definition, validators, options)
        found.extend(problems)
        if record is not None:
            checked.append(record)
    return checked, found


def replay_if_accepted(request: Request, partner_id: str, tenant_id: str,
                       keyed: idempotency.Keyed | None) -> Response | None:
    """The 202 again if this request (its Idempotency-Key and all) was accepted before, as far as
    this ingress knows already (else `publish_accepted` decides, with every ingress)."""
    if keyed is None:
        return None
    done = idempotency.accepted_before(ingress_of(request).ledger.key_entry(partner_id, tenant_id, keyed.key),
                                       keyed.fingerprint)
    return accepted(done, replayed=True) if done is not None else None


async def publish_accepted(request: Request, keyed: idempotency.Keyed | None, partner_id: str, tenant_id: str,
                           definition: Definition, records: list[tuple[str, dict[str, Any] | None]], op: str,
                           options: BatchOptions = BatchOptions(), cascade: bool = False,
                           plans: dict[int, dict[str, Any]] | None = None) -> Response:
    """Publish a batch-shaped write (`publish_batch`) and answer 202; with an Idempotency-Key,
    at most once per key (`ingest.idempotency`), answering a retry with the first 202. Over a
    quota or the backlog bound (`ingest.quotas`), 429 or 503 before any claim is made."""
    reservation = await quotas.admit(request, partner_id, tenant_id, len(records))
    try:
        claim = None
        if keyed is not None:
            held = await idempotency.claim(ingress_of(request), partner_id, tenant_id, keyed.key, keyed.fingerprint,
                                           answer_budget.answer_by(request))
            if isinstance(held, BatchMeta):
                return accepted(held, replayed=True)
            claim = held
        return accepted(await publish_batch(request, partner_id, tenant_id, definition, records, op, options,
                                            cascade, plans, claim, reservation))
    finally:
        reservation.release()


async def publish_batch(request: Request, partner_id: str, tenant_id: str, definition: Definition,
                        records: list[tuple[str, dict[str, Any] | None]], op: str,
                        options: BatchOptions = BatchOptions(), cascade: bool = False,
                        plans: dict[int, dict[str, Any]] | None = None,
                        claim: IdempotencyClaim | None = None,
                        reservation: quotas.Reservation | None = None) -> BatchMeta:
    """Publish a batch of `op` on (externalId, record) pairs in one transaction, or 503.
    `plans`: the delete plans of some record indexes (`ingest.deletes`); `claim`: the
    idempotency key it takes (released if the batch is surely not accepted); `reservation`:
    its admission (`ingest.quotas`), else it is admitted here (429 or 503 if not)."""
    if reservation is None:
        reservation = await quotas.admit(request, partner_id, tenant_id, len(records))
        try:
            return await publish_batch(request, partner_id, tenant_id, definition, records, op, options, cascade,
                                       plans, claim, reservation)
        finally:
            reservation.release()
    state = ingress_of(request)
    meta = BatchMeta(str(uuid.uuid4()), partner_id, tenant_id, definition.id, len(records),
                     int(time.time() * 1000), BATCH_TYPE_OF_OP[op])
    try:
        await state.publisher.publish(batch_messages(state.topics, meta, definition, records, op, options, cascade,
                                                     plans, claim), answer_budget.answer_by(request))
    except PublishError as exc:
        if claim is not None and not exc.committing:
            idempotency.release_later(state, claim)
        if exc.committing:  # the broker went silent while confirming the commit
            raise ApiError(503, f"Kafka did not confirm the batch in time; it may or may not have been accepted: "
                                f"GET /api/batches/{meta.batchId} tells ({exc})",
                           data={"batchId": meta.batchId}) from None
        raise ApiError(503, f"The batch could not be stored durably, nothing was accepted; retry later ({exc})"
                       ) from None
    state.ledger.add(meta)  # its arrival counts for the tenant's quota at once
    state.admission.accepted(partner_id, tenant_id, meta.recordCount)  # and in the backlog, in flight
    if claim is not None:
        state.ledger.take_key(claim, meta)
    metrics.accepted(op, len(records))
    return meta


def accepted(meta: BatchMeta, replayed: bool = False) -> Response:
    """The 202 of a batch-shaped write (`replayed`: again, for a retry with its Idempotency-Key)."""
    response = ok({"batchId": meta.batchId, "message": "Batch accepted for processing",
                   "recordCount": meta.recordCount, "schemaDefinitionId": meta.schemaDefinitionId},
                  "Batch accepted", status=202)
    if replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return response


def batch_messages(topics: ServiceTopics, meta: BatchMeta, definition: Definition,
                   records: list[tuple[str, dict[str, Any] | None]], op: str,
                   options: BatchOptions = BatchOptions(), cascade: bool = False,
                   plans: dict[int, dict[str, Any]] | None = None,
                   claim: IdempotencyClaim | None = None) -> list[Message]:
    """The batch's registration (with the idempotency key it takes) and its ingest messages (a
    partition's records grouped), ready to publish."""
    batch = build_ingest_batch(
        meta.partnerId, meta.tenantId, definition.id, records, op=op,
        schema_version=definition.versionNumber, ignore_unknown_fields=options.ignore_unknown_fields,
        dependency_wait_timeout=options.dependency_wait_timeout if op in ("upsert", "reject") else 0,
        cascade=cascade, batch_id=meta.batchId, accepted_at=meta.acceptedAt, partitions=topics.ingest.partitions,
        plans=plans)
    messages: list[Message] = [(topics.batch_events.name, meta.batchId.encode(), registration(meta, claim), None)]
    messages.extend((topics.ingest.name, key, value, headers) for key, value, headers in batch.messages)
    return messages


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
        definition = state.registry.get(partner_id, definition_id)
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
    Route("/api/resources/{schema}/batch", upload, methods=["POST"]),
    Route("/api/resources/{schema}/batch", patch_batch, methods=["PATCH"]),
    Route("/api/batches", list_batches, methods=["GET"]),
    Route("/api/batches/{batch_id}", get_batch, methods=["GET"]),
]
