"""Messages on the batch-events topic: what batch status is computed from.

Keyed by batchId (UTF-8), values are JSON objects:

- ``{"type": "batch", ...}`` — a batch registration (``batchType`` names its kind; absent means
  an upload), written by the ingress in the same Kafka
  transaction as the batch's ingest events;
- ``{"type": "records", "outcomes": [{"index", "externalId", "status", "at", "code",
  "message", ...}, ...]}`` — outcomes of records of the batch (``created``, ``updated``,
  ``deleted``, ``failed`` or ``pending``) in the order they happened, written by a worker in the same
  transaction as the changes they report.

Both carry the batch's description (``BatchMeta``), so that a batch produced directly to
Kafka, without a registration, is described by its first outcomes.

An upload with an `Idempotency-Key` first claims its key (``ingest.idempotency``):

- ``{"type": "claim", "partnerId", "tenantId", "key", "fingerprint", "claimant", "at"}`` —
  keyed by ``claim_key``, so that all claims of one key are in one partition, in one order;
- ``{"type": "release", ...the claim}`` — its batch was not accepted: the key is free again;
- the registration of the batch carries the claim under ``"idempotency"``: the key is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

CREATED, UPDATED, DELETED, FAILED, PENDING = "created", "updated", "deleted", "failed", "pending"

# Batch types (docs/api.md 5, 6a): what kind of write a batch is.
INGEST_BATCH = "PARTNER_RESOURCE_JSON_INGEST"
PATCH_BATCH = "PARTNER_RESOURCE_BATCH_PATCH"
DELETE_BATCH = "PARTNER_RESOURCE_BATCH_DELETE"
BATCH_TYPES = (INGEST_BATCH, PATCH_BATCH, DELETE_BATCH)

# Failure codes of a record.
VALIDATION_FAILED = "VALIDATION_FAILED"
ALREADY_EXISTS = "ALREADY_EXISTS"
MISSING_DEPENDENCY = "MISSING_DEPENDENCY"
DEPENDENCY_TIMEOUT = "DEPENDENCY_TIMEOUT"
SCHEMA_NOT_FOUND = "SCHEMA_NOT_FOUND"
INVALID_OPTIONS = "INVALID_OPTIONS"
NOT_FOUND = "NOT_FOUND"
REFERENCED = "REFERENCED"


@dataclass(frozen=True)
class BatchMeta:
    batchId: str
    partnerId: str
    tenantId: str
    schemaDefinitionId: str
    recordCount: int
    acceptedAt: int  # epoch milliseconds
    batchType: str = INGEST_BATCH  # events written before batch types existed are uploads

    @classmethod
    def of_event(cls, event: Mapping[str, Any]) -> BatchMeta:
        return cls(event["batchId"], event["partnerId"], event["tenantId"], event["schemaDefinitionId"],
                   event["recordCount"], event["acceptedAt"], event.get("batchType") or INGEST_BATCH)


@dataclass(frozen=True)
class IdempotencyClaim:
    """One attempt to accept a request under an idempotency key of a tenant."""

    partnerId: str
    tenantId: str
    key: str
    fingerprint: str  # of the request: method, path, query and body
    claimant: str  # this attempt's id
    at: int  # epoch milliseconds

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> IdempotencyClaim:
        return cls(event["partnerId"], event["tenantId"], event["key"], event["fingerprint"], event["claimant"],
                   int(event["at"]))


def claim_key(partner_id: str, tenant_id: str, key: str) -> bytes:
    return orjson.dumps([partner_id, tenant_id, key])


def claim_event(claim: IdempotencyClaim, released: bool = False) -> bytes:
    return orjson.dumps({"type": "release" if released else "claim", **asdict(claim)})


def registration(meta: BatchMeta, claim: IdempotencyClaim | None = None) -> bytes:
    event: dict[str, Any] = {"type": "batch", **asdict(meta)}
    if claim is not None:
        event["idempotency"] = asdict(claim)
    return orjson.dumps(event)


def outcome_entry(index: int, external_id: str, status: str, at_ms: int, source_partition: int, source_offset: int,
                  code: str | None = None, message: str | None = None, extra: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One record's outcome, made by the input message at `source_offset` of `source_partition`;
    `extra` carries details such as a pending record's dependencies. One dict for most records
    (no code, no details): the worker makes one per record."""
    entry: dict[str, Any] = {"index": index, "externalId": external_id, "status": status, "at": at_ms,
                             "sourcePartition": source_partition, "sourceOffset": source_offset}
    if code is not None:
        entry["code"], entry["message"] = code, message
    if extra:
        entry.update(extra)
    return entry


def outcomes(meta: BatchMeta, entries: list[dict[str, Any]]) -> bytes:
    """Outcomes of records of one batch (`outcome_entry`), in the order they happened."""
    return orjson.dumps({"type": "records", **asdict(meta), "outcomes": entries})
