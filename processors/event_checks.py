"""What the pipeline checks on every ingest event, since direct producers skip the ingress."""

from __future__ import annotations

from schemas.batch_events import DELETE_BATCH
from schemas.events import Operation
from schemas.records import MAX_DELETE_RECORDS, MAX_RECORDS


def unusable_batch(event: Operation) -> str | None:
    """Why an event cannot be counted in any batch status (it then goes to dead letters)."""
    if not event["batchId"]:
        return "no batchId"
    if not event["partnerId"] or not event["tenantId"]:
        return "partnerId and tenantId are required"
    most = MAX_DELETE_RECORDS if event.get("batchType") == DELETE_BATCH else MAX_RECORDS
    if not 1 <= event["recordCount"] <= most:
        return f"recordCount must be 1..{most}, got {event['recordCount']}"
    if not 0 <= event["recordIndex"] < event["recordCount"]:
        return f"recordIndex {event['recordIndex']} is outside 0..{event['recordCount'] - 1}"
    return None
