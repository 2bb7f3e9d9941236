"""One batch's progress: its counters, each record's state and the details of its failed,
succeeded and pending records (docs/api.md 5), as `state.batch_store` keeps it and
`state.remote` sends it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.batch_events import (
    CREATED,
    DELETED,
    FAILED,
    INGEST_BATCH,
    PENDING,
    UPDATED,
)

_UNKNOWN, _SUCCESS, _FAILED, _PENDING = 0, 1, 2, 3
_STATE_OF = {CREATED: _SUCCESS, UPDATED: _SUCCESS, DELETED: _SUCCESS, FAILED: _FAILED, PENDING: _PENDING}
STATUSES = ("queued", "processing", "success", "partial_success", "failed")


@dataclass
class BatchState:
    """One batch: its description, counters and record states; `details` and
    `pending_details` hold what a read loaded, or what a fold added."""

    batchId: str
    partnerId: str
    tenantId: str
    schemaDefinitionId: str
    recordCount: int
    acceptedAt: int
    batchType: str = INGEST_BATCH
    states: bytearray = field(default_factory=bytearray)
    successful: int = 0
    failed: int = 0
    pending: int = 0
    startedAt: int | None = None
    completedAt: int | None = None
    summary: Counter[str] = field(default_factory=Counter)
    cascade: Counter[str] = field(default_factory=Counter)  # resources deleted by cascade, by definition id
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    succeeded_details: dict[int, dict[str, Any]] = field(default_factory=dict)  # added by a fold
    pending_details: dict[int, dict[str, Any]] = field(default_factory=dict)
    resolved_pending: set[int] = field(default_factory=set)  # pending details to delete
    listed_status: str | None = None  # the status its list entries carry on disk
    stored_pending: int = 0  # its pending count as on disk (what the store's total counts)
    stored_outcomes: int = 0  # its records with an outcome, as on disk (likewise)

    def __post_init__(self) -> None:
        if len(self.states) != self.recordCount:
            self.states = bytearray(self.recordCount)

    @property
    def processed(self) -> int:
        return self.successful + self.failed

    @property
    def outcomes(self) -> int:
        """Records a worker has taken: applied, failed or waiting for references."""
        return self.successful + self.failed + self.pending

    @property
    def version(self) -> int:
        """Grows with every change of the batch's counts: a record's outcome only ever moves from
        none to pending or terminal, or from pending to terminal."""
        return self.processed * (self.recordCount + 1) + self.pending

    @property
    def status(self) -> str:
        if self.processed < self.recordCount:
            return "processing" if self.startedAt is not None else "queued"
        if self.failed == 0:
            return "success"
        return "failed" if self.successful == 0 else "partial_success"

    def record(self, event: dict[str, Any]) -> None:
        index = event.get("index")
        new = _STATE_OF.get(event.get("status", ""))
        if not isinstance(index, int) or not 0 <= index < self.recordCount or new is None:
            return
        old = self.states[index]
        if old in (_SUCCESS, _FAILED):
            return  # terminal already: a replay or duplicate changes nothing
        at = event.get("at") or self.acceptedAt
        self.startedAt = at if self.startedAt is None else min(self.startedAt, at)
        if old == _PENDING:
            self.pending -= 1
            self.pending_details.pop(index, None)
            self.resolved_pending.add(index)
        self.states[index] = new
        if new == _SUCCESS:
            self.successful += 1
            self.succeeded_details[index] = {"externalId": event.get("externalId"), "result": event["status"]}
            cascade = event.get("cascade")
            if isinstance(cascade, dict):
                self.cascade.update({k: v for k, v in cascade.items() if isinstance(v, int)})
        elif new == _FAILED:
            self.failed += 1
            code = event.get("code") or "FAILED"
            self.summary[code] += 1
            self.details[index] = {"externalId": event.get("externalId"), "code": code,
                                   "message": event.get("message")}
        else:
            self.pending += 1
            self.pending_details[index] = event
            self.resolved_pending.discard(index)
        if self.processed == self.recordCount:
            self.completedAt = at

    def counters(self) -> bytes:
        return orjson.dumps({
            "batchId": self.batchId, "partnerId": self.partnerId, "tenantId": self.tenantId,
            "schemaDefinitionId": self.schemaDefinitionId, "recordCount": self.recordCount,
            "acceptedAt": self.acceptedAt, "batchType": self.batchType, "listedStatus": self.listed_status,
            "successful": self.successful, "failed": self.failed,
            "pending": self.pending, "startedAt": self.startedAt, "completedAt": self.completedAt,
            "summary": self.summary, "cascade": self.cascade,
        })

    def to_json(self) -> dict[str, Any]:
        """The batch as a reader sends it to an ingress (`state.remote`): counters and the details read."""
        return {**orjson.loads(self.counters()), "details": self.details, "pendingDetails": self.pending_details}

    @classmethod
    def from_json(cls, sent: dict[str, Any]) -> BatchState:
        """A batch as `to_json` sent it (record states are not sent: they stay with the reader)."""
        batch = cls.from_counters(orjson.dumps(sent), None)
        batch.details = {int(i): d for i, d in sent["details"].items()}
        batch.pending_details = {int(i): d for i, d in sent["pendingDetails"].items()}
        return batch

    @classmethod
    def from_counters(cls, raw: bytes, states: bytes | None) -> BatchState:
        c = orjson.loads(raw)
        return cls(c["batchId"], c["partnerId"], c["tenantId"], c["schemaDefinitionId"], c["recordCount"],
                   c["acceptedAt"], c["batchType"], bytearray(states or b""), c["successful"], c["failed"],
                   c["pending"], c["startedAt"], c["completedAt"], Counter(c["summary"]),
                   Counter(c.get("cascade") or {}), listed_status=c["listedStatus"], stored_pending=c["pending"],
                   stored_outcomes=c["successful"] + c["failed"] + c["pending"])
