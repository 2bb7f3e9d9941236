"""How one ingest event changes one stored resource (docs/api.md section 4, per record)."""

from __future__ import annotations

import functools
import hashlib
import uuid
from typing import Any, NamedTuple

import orjson

from processors.merge import merge_patch
from schemas.batch_events import ALREADY_EXISTS, CREATED, FAILED, NOT_FOUND, UPDATED, VALIDATION_FAILED
from schemas.definitions import Definition
from schemas.events import Operation
from schemas.records import BatchOptions, check_record, external_id_of
from schemas.validation import RecordValidators, error_messages, without_nulls

_RESOURCE_IDS = uuid.UUID("5b0d3c52-7d0e-4a8f-9a51-0f6f3f1c2e11").bytes


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def uuid5(namespace: bytes, name: str) -> str:
    """`str(uuid.uuid5(UUID(bytes=namespace), name))` without building UUID objects (a fifth of
    the time; the worker derives one per created resource)."""
    h = hashlib.sha1(namespace + name.encode()).hexdigest()
    # Version 5 in the 13th hex digit; the RFC 4122 variant (binary 10) in the top bits of the 17th.
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


class Outcome(NamedTuple):  # a tuple: one is made per record
    status: str
    code: str | None = None
    message: str | None = None


_CREATED, _UPDATED = Outcome(CREATED), Outcome(UPDATED)  # one each: most records end so


def op_of(event: Operation) -> str:
    """The event's operation: upsert, reject, patch or delete (pending events stored before
    operations had names are uploads)."""
    return event.get("op") or event["onConflict"]


def waits(event: Operation) -> int:
    """Seconds the event may wait for missing references: only uploads wait."""
    return event["dependencyWaitTimeout"] if op_of(event) in ("upsert", "reject") else 0


def options_of(event: Operation) -> BatchOptions:
    return _options(event["onConflict"], event["ignoreUnknownFields"], event["dependencyWaitTimeout"])


@functools.lru_cache(maxsize=256)
def _options(on_conflict: str, ignore_unknown_fields: bool, dependency_wait_timeout: int) -> BatchOptions:
    return BatchOptions(on_conflict, ignore_unknown_fields, dependency_wait_timeout)


@functools.lru_cache(maxsize=256)
def option_problems(options: BatchOptions) -> tuple[str, ...]:
    """What is out of range in `options` (direct producers skip the HTTP parser)."""
    return tuple(options.problems())


def checked_record(event: Operation, definition: Definition, validators: RecordValidators,
                   creating: bool = False) -> tuple[dict[str, Any] | None, Outcome | None]:
    """The event's record after the ingress's checks (events may come from direct producers).
    `creating`: the resource does not exist, so the record must be complete on its own."""
    if event["data"] is None:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: an {op_of(event)} "
                                                        "operation needs its record in `data`")
    try:
        raw = orjson.loads(event["data"])
    except orjson.JSONDecodeError as exc:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: not JSON: {exc}")
    options = options_of(event)
    if creating and options.on_conflict != "reject":
        options = _options("reject", options.ignore_unknown_fields, options.dependency_wait_timeout)
    record, problems = check_record(event["recordIndex"], raw, definition, validators, options)
    if problems or record is None:
        return None, Outcome(FAILED, VALIDATION_FAILED, "; ".join(problems))
    if external_id_of(record, definition) != event["externalId"]:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: externalId "
                             f"{event['externalId']!r} does not match {definition.externalIdField!r} of the record")
    return record, None


def apply_record(current: dict[str, Any] | None, event: Operation, record: dict[str, Any],
                 validators: RecordValidators, now_ms: int, complete: bool = False
                 ) -> tuple[dict[str, Any] | None, Outcome]:
    """The resource after applying a checked `record` (None if unchanged), and its outcome.

    Creates or merges (RFC 7396); the result must validate against the full schema (`complete`:
    the record was checked as a creation already). A patch of an absent resource fails NOT_FOUND.
    """
    if current is None and op_of(event) == "patch":
        return None, Outcome(FAILED, NOT_FOUND, f"{where(event)}: resource '{event['externalId']}' does not exist "
                                                "(a patch never creates)")
    if current is None:
        data = without_nulls(record)
        if not complete and not validators.full.is_valid(data):
            return None, Outcome(FAILED, VALIDATION_FAILED,
                                 "; ".join(error_messages(validators.full, data, where(event))))
        resource = {
            # Derived from the event, so that a replay creates the very same resource.
            "id": uuid5(_RESOURCE_IDS, event["eventId"] + "/" + event["externalId"]),
            "schemaDefinitionId": event["schemaDefinitionId"], "platformId": event["partnerId"],
            "businessId": event["tenantId"], "resourceExternalId": event["externalId"],
            "createdAt": now_ms, "updatedAt": now_ms, "data": data,
        }
        return resource, _CREATED
    if event["onConflict"] == "reject":
        return None, Outcome(FAILED, ALREADY_EXISTS,
                             f"{where(event)}: resource '{event['externalId']}' already exists")
    merged = merge_patch(current["data"], record)
    if not validators.full.is_valid(merged):
        return None, Outcome(FAILED, VALIDATION_FAILED,
                             "; ".join(error_messages(validators.full, merged, where(event))))
    return {**current, "data": merged, "updatedAt": now_ms}, _UPDATED


def where(event: Operation) -> str:
    """How errors name the event's record: its place in its batch."""
    return f"resources[{event['recordIndex']}]"
