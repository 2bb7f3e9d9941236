"""The batch status table: every batch's progress, folded from the batch-events topic.

Each ingress keeps this table for all batches (registrations and record outcomes are small)
and answers `GET /api/batches[/{id}]` from it. Outcomes are counted once per record index,
whatever a replay or a duplicate delivers: a record that reached a terminal outcome keeps it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.batch_events import CREATED, FAILED, PENDING, UPDATED, BatchMeta
from topics.view import TopicView

_UNKNOWN, _SUCCESS, _FAILED, _PENDING = 0, 1, 2, 3
_STATE_OF = {CREATED: _SUCCESS, UPDATED: _SUCCESS, FAILED: _FAILED, PENDING: _PENDING}


@dataclass
class BatchState:
    batchId: str
    partnerId: str
    tenantId: str
    schemaDefinitionId: str
    recordCount: int
    acceptedAt: int
    states: bytearray = field(default_factory=bytearray)
    successful: int = 0
    failed: int = 0
    pending: int = 0
    startedAt: int | None = None
    completedAt: int | None = None
    summary: Counter[str] = field(default_factory=Counter)
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    pending_details: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = bytearray(self.recordCount)

    @property
    def processed(self) -> int:
        return self.successful + self.failed

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
        self.states[index] = new
        if new == _SUCCESS:
            self.successful += 1
        elif new == _FAILED:
            self.failed += 1
            code = event.get("code") or "FAILED"
            self.summary[code] += 1
            self.details[index] = {"externalId": event.get("externalId"), "code": code,
                                   "message": event.get("message")}
        else:
            self.pending += 1
            self.pending_details[index] = event
        if self.processed == self.recordCount:
            self.completedAt = at


class BatchStatusTable(TopicView):
    """All batches, by id and by tenant, kept current from the batch-events topic."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self._batches: dict[str, BatchState] = {}
        self._by_tenant: dict[tuple[str, str], list[str]] = {}

    async def find(self, partner_id: str, tenant_id: str, batch_id: str, wait_s: float = 3.0) -> BatchState | None:
        """The batch, waiting up to `wait_s` for one accepted moments ago through another ingress.

        Its registration is readable once committed and once any worker transaction open before
        it on that partition has ended (about one commit interval); an id nobody wrote is known
        to be unknown as soon as no transaction is open.
        """
        batch = self.get(partner_id, tenant_id, batch_id)
        if batch is None:
            await self.settle(wait_s)
            batch = self.get(partner_id, tenant_id, batch_id)
        return batch

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            event = orjson.loads(value)
            batch = self._batches.get(event["batchId"]) or self.add(BatchMeta(
                event["batchId"], event["partnerId"], event["tenantId"], event["schemaDefinitionId"],
                int(event["recordCount"]), int(event["acceptedAt"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a batch event of ours; nothing to count
        if event.get("type") == "records":
            for entry in event.get("outcomes") or []:
                if isinstance(entry, dict):
                    batch.record(entry)

    def add(self, meta: BatchMeta) -> BatchState:
        """Start tracking a batch (also called by the ingress that accepted it, for read-your-writes)."""
        batch = self._batches.get(meta.batchId)
        if batch is None:
            batch = BatchState(meta.batchId, meta.partnerId, meta.tenantId, meta.schemaDefinitionId,
                               meta.recordCount, meta.acceptedAt)
            self._batches[batch.batchId] = batch
            self._by_tenant.setdefault((batch.partnerId, batch.tenantId), []).append(batch.batchId)
        return batch

    def get(self, partner_id: str, tenant_id: str, batch_id: str) -> BatchState | None:
        batch = self._batches.get(batch_id)
        if batch is None or (batch.partnerId, batch.tenantId) != (partner_id, tenant_id):
            return None
        return batch

    def of_tenant(self, partner_id: str, tenant_id: str) -> list[BatchState]:
        """The tenant's batches, newest first."""
        ids = self._by_tenant.get((partner_id, tenant_id), [])
        return sorted((self._batches[i] for i in ids), key=lambda b: (b.acceptedAt, b.batchId), reverse=True)
