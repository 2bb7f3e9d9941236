"""How one ingest event changes one stored resource (API.md section 4, per record)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from processors.merge import merge_patch
from schemas.batch_events import ALREADY_EXISTS, CREATED, FAILED, NOT_FOUND, UPDATED, VALIDATION_FAILED
from schemas.definitions import Definition
from schemas.records import BatchOptions, check_record, external_id_of
from schemas.validation import RecordValidators, error_messages, without_nulls

_RESOURCE_IDS = uuid.UUID("5b0d3c52-7d0e-4a8f-9a51-0f6f3f1c2e11")


@dataclass(frozen=True)
class Outcome:
    status: str
    code: str | None = None
    message: str | None = None


def op_of(event: dict[str, Any]) -> str:
    """The event's operation: upsert, reject, patch or delete (pending events stored before
    operations had names are uploads)."""
    return event.get("op") or event["onConflict"]


def waits(event: dict[str, Any]) -> int:
    """Seconds the event may wait for missing references: only uploads wait."""
    return event["dependencyWaitTimeout"] if op_of(event) in ("upsert", "reject") else 0


def options_of(event: dict[str, Any]) -> BatchOptions:
    return BatchOptions(event["onConflict"], event["ignoreUnknownFields"], event["dependencyWaitTimeout"])


def checked_record(event: dict[str, Any], definition: Definition, validators: RecordValidators
                   ) -> tuple[dict[str, Any] | None, Outcome | None]:
    """The event's record after the ingress's checks (events may come from direct producers)."""
    if event["data"] is None:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: an {op_of(event)} "
                                                        "operation needs its record in `data`")
    try:
        raw = orjson.loads(event["data"])
    except orjson.JSONDecodeError as exc:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: not JSON: {exc}")
    record, problems = check_record(event["recordIndex"], raw, definition, validators, options_of(event))
    if problems or record is None:
        return None, Outcome(FAILED, VALIDATION_FAILED, "; ".join(problems))
    if external_id_of(record, definition) != event["externalId"]:
        return None, Outcome(FAILED, VALIDATION_FAILED, f"resources[{event['recordIndex']}]: externalId "
                             f"{event['externalId']!r} does not match {definition.externalIdField!r} of the record")
    return record, None


def apply_record(current: dict[str, Any] | None, event: dict[str, Any], record: dict[str, Any],
                 validators: RecordValidators, now_ms: int) -> tuple[dict[str, Any] | None, Outcome]:
    """The resource after applying a checked `record` (None if unchanged), and its outcome.

    Creates or merges (RFC 7396); the result must validate against the full schema. A patch
    of an absent resource fails NOT_FOUND.
    """
    options = options_of(event)
    where = f"resources[{event['recordIndex']}]"
    if current is None and op_of(event) == "patch":
        return None, Outcome(FAILED, NOT_FOUND, f"{where}: resource '{event['externalId']}' does not exist "
                                                "(a patch never creates)")
    if current is None:
        data = without_nulls(record)
        if not validators.full.is_valid(data):
            return None, Outcome(FAILED, VALIDATION_FAILED, "; ".join(error_messages(validators.full, data, where)))
        resource = {
            # Derived from the event, so that a replay creates the very same resource.
            "id": str(uuid.uuid5(_RESOURCE_IDS, event["eventId"] + "/" + event["externalId"])),
            "schemaDefinitionId": event["schemaDefinitionId"], "platformId": event["partnerId"],
            "businessId": event["tenantId"], "resourceExternalId": event["externalId"],
            "createdAt": now_ms, "updatedAt": now_ms, "data": data,
        }
        return resource, Outcome(CREATED)
    if options.on_conflict == "reject":
        return None, Outcome(FAILED, ALREADY_EXISTS, f"{where}: resource '{event['externalId']}' already exists")
    merged = merge_patch(current["data"], record)
    if not validators.full.is_valid(merged):
        return None, Outcome(FAILED, VALIDATION_FAILED,
                             "; ".join(error_messages(validators.full, merged, where)))
    return {**current, "data": merged, "updatedAt": now_ms}, Outcome(UPDATED)
