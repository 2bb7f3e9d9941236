"""How one ingest event changes one stored resource (API.md section 4, per record)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from processors.merge import merge_patch
from schemas.batch_events import ALREADY_EXISTS, CREATED, FAILED, UPDATED, VALIDATION_FAILED
from schemas.definitions import Definition
from schemas.records import BatchOptions, check_record
from schemas.validation import RecordValidators, error_messages, without_nulls

_RESOURCE_IDS = uuid.UUID("5b0d3c52-7d0e-4a8f-9a51-0f6f3f1c2e11")


@dataclass(frozen=True)
class Outcome:
    status: str
    code: str | None = None
    message: str | None = None


def options_of(event: dict[str, Any]) -> BatchOptions:
    return BatchOptions(event["onConflict"], event["ignoreUnknownFields"], event["dependencyWaitTimeout"])


def apply_record(current: dict[str, Any] | None, event: dict[str, Any], record: Any,
                 definition: Definition, validators: RecordValidators, now_ms: int
                 ) -> tuple[dict[str, Any] | None, Outcome]:
    """The resource after applying `record` (None if unchanged) and the record's outcome.

    The record gets the same checks as at the ingress (events may come from direct
    producers), then creates or merges; the result must validate against the full schema.
    """
    options = options_of(event)
    record, problems = check_record(event["recordIndex"], record, definition, validators, options)
    if problems:
        return None, Outcome(FAILED, VALIDATION_FAILED, "; ".join(problems))
    where = f"resources[{event['recordIndex']}]"
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
