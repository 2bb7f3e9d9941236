"""Batch uploads and patches, `POST`/`PATCH /api/resources/{schema}/batch` (docs/api.md 4):
checked, then published as one Kafka transaction with the batch's registration."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import answer_budget, idempotency, metrics, quotas
from ingest.auth import tenant_principal
from ingest.context import ingress_of
from ingest.publisher import Message, PublishError
from ingest.request_parsing import parse_options, read_body
from ingest.responses import ApiError, ok
from schemas.batch_events import BatchMeta, IdempotencyClaim, registration
from schemas.definitions import Definition
from schemas.events import BATCH_TYPE_OF_OP, build_ingest_batch
from schemas.records import MAX_RECORDS, BatchOptions, check_record, external_id_of
from schemas.validation import validators_for
from topics.definitions import ServiceTopics


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
    quotas.describe(request, principal.partner_id, principal.tenant_id)
    definition = await find_definition(request, principal.partner_id)
    body = await read_body(request, state.settings.max_body_bytes)
    keyed = idempotency.keyed(request, body)
    replay = replay_if_accepted(request, principal.partner_id, principal.tenant_id, keyed)
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
    return await publish_accepted(request, keyed, principal.partner_id, principal.tenant_id, definition,
                                  [(external_id_of(r, definition) or "", r) for r in checked], op, options)


async def find_definition(request: Request, partner_id: str) -> Definition:
    """The active definition the path names, or 404."""
    name = request.path_params["schema"]
    definition = await ingress_of(request).definitions.find_fresh(partner_id, name, answer_budget.seconds_left(request))
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


routes = [
    Route("/api/resources/{schema}/batch", upload, methods=["POST"]),
    Route("/api/resources/{schema}/batch", patch_batch, methods=["PATCH"]),
]
