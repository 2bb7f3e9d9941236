"""The batch status table: every batch's progress (`state.batch_state`), folded from the
batch-events topic, on disk.

A reader (`state.reader`) keeps it for its share of the partitions (`BatchStore`: a batch's
registration and all its outcomes share its key, hence its partition) and answers the ingresses'
`GET /api/batches[/{id}[/records|/events]]` from it; every ingress keeps only
`state.bookkeeping.BatchLedger`. Outcomes are counted once per record index, whatever a replay
or a duplicate delivers: a record that reached a terminal outcome keeps it.

Layout (`state.store`, sorted keys), besides `state.bookkeeping`'s: `b` + id → the batch's
counters and description; `s` + id → one byte per record (its state); `f` + id + index → a
failed record's detail; `k` + id + index → a succeeded record's external id and result; `p` +
id + index → a pending record's detail (index: 4 bytes, big-endian, so a batch's records of one
state are in order); `t` + tenant + NUL + filter + newest-first time + id → the tenant's list,
so a page is one seek at any depth; `n` + tenant + NUL + filter → its count; `g` → the records
pending in all batches; `c` → the records of all batches kept, `o` → those of them with an
outcome (pending included), so `c` - `o` is the workers' backlog.
A filter is two bytes, the batch type's and the status's, `*` for "any": every batch is listed
four times (any/any, its type/any, any/its status, its type/its status), and moves between
status lists as its status changes, so every filtered page is one seek too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import struct
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from schemas.batch_events import (
    DELETE_BATCH,
    INGEST_BATCH,
    PATCH_BATCH,
    BatchMeta,
)
from state.batch_state import STATUSES, BatchState
from state.bookkeeping import Bookkeeping, batch_key, expiring_key, tenant_key
from state.store import Changes

_STATUS_CODE = dict(zip(STATUSES, b"qpsxf"))
_TYPE_CODE = {INGEST_BATCH: ord("i"), PATCH_BATCH: ord("u"), DELETE_BATCH: ord("d")}
_ANY = ord("*")
# What a record's outcome is listed as (`GET /api/batches/{id}/records`), and where it is stored.
RECORD_STATUSES = ("succeeded", "failed", "pending")
_RECORD_PREFIX = {"succeeded": b"k", "failed": b"f", "pending": b"p"}
_NEWEST_FIRST = (1 << 63) - 1
_PENDING_TOTAL = b"g"
_ACCEPTED_TOTAL = b"c"
_OUTCOMES_TOTAL = b"o"
log = logging.getLogger(__name__)






def _filter(batch_type: str | None, status: str | None) -> bytes:
    return bytes((_TYPE_CODE[batch_type] if batch_type else _ANY, _STATUS_CODE[status] if status else _ANY))


def _list_prefix(partner_id: str, tenant_id: str, batch_type: str | None, status: str | None) -> bytes:
    return b"t" + tenant_key(partner_id, tenant_id) + b"\x00" + _filter(batch_type, status)


def _count_key(partner_id: str, tenant_id: str, batch_type: str | None, status: str | None) -> bytes:
    return b"n" + tenant_key(partner_id, tenant_id) + b"\x00" + _filter(batch_type, status)


def _filters(batch: BatchState, status: str) -> list[tuple[str | None, str | None]]:
    """The four lists a batch of this status is in."""
    return [(t, s) for t in (None, batch.batchType) for s in (None, status)]


def _entry(batch: BatchState, batch_type: str | None, status: str | None) -> bytes:
    return _position(_list_prefix(batch.partnerId, batch.tenantId, batch_type, status), batch.acceptedAt, batch.batchId)


def _position(prefix: bytes, accepted_at: int, batch_id: str) -> bytes:
    """Where a batch is in the list of `prefix`: newest first, then by id."""
    return prefix + struct.pack(">Q", _NEWEST_FIRST - accepted_at) + batch_id.encode()


def _add_count(changes: Changes, key: bytes, delta: int) -> None:
    raw = changes.get(key)
    changes.put(key, struct.pack(">q", (struct.unpack(">q", raw)[0] if raw else 0) + delta))


def _list(changes: Changes, batch: BatchState, status: str, delta: int, only_by_status: bool = False) -> None:
    """Put the batch in (delta +1) or take it out of (-1) its lists as a batch of `status`
    (`only_by_status`: the two lists filtered by status, what a change of status moves)."""
    for batch_type, filtered_status in _filters(batch, status):
        if only_by_status and filtered_status is None:
            continue
        entry = _entry(batch, batch_type, filtered_status)
        if delta > 0:
            changes.put(entry, b"")
        else:
            changes.delete(entry)
        _add_count(changes, _count_key(batch.partnerId, batch.tenantId, batch_type, filtered_status), delta)


class BatchStore(Bookkeeping):
    """All batches, by id and by tenant, with their records' outcomes, kept current from the
    batch-events topic (a reader: its share of the partitions)."""

    FORMAT = b"4"  # 2: lists filtered by batch type and status; 3: succeeded records; 4: backlog, quotas

    async def find(self, partner_id: str, tenant_id: str, batch_id: str, wait_s: float = 3.0,
                   details: bool = True) -> BatchState | None:
        """The batch, waiting up to `wait_s` for one accepted moments ago through another ingress.

        Its registration is readable once committed and once any worker transaction open before
        it on that partition has ended (about one commit interval); an id nobody wrote is known
        to be unknown as soon as no transaction is open.
        """
        batch = self.get(partner_id, tenant_id, batch_id, details)
        if batch is None:
            await self.settle(wait_s)
            batch = self.get(partner_id, tenant_id, batch_id, details)
        return batch

    async def outcome(self, partner_id: str, tenant_id: str, batch_id: str, timeout_s: float) -> BatchState | None:
        """The batch once it is terminal (every record applied or failed), waiting up to
        `timeout_s` for it; None if it is not terminal by then."""
        deadline = time.monotonic() + timeout_s
        while True:
            batch = self.get(partner_id, tenant_id, batch_id)
            if batch is not None and batch.processed == batch.recordCount:
                return batch
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.changed(left)

    def fold_all(self, changes: Changes, messages: list[ConsumerRecord]) -> None:
        touched: dict[str, BatchState] = {}  # a batch is read and written once per fetch
        for message in messages:
            self._fold(changes, touched, message.value)
        for batch in touched.values():
            self._write(changes, batch)

    def _fold(self, changes: Changes, touched: dict[str, BatchState], value: bytes | None) -> None:
        if value is None:
            return
        try:
            event = orjson.loads(value)
            if self._fold_bookkeeping(changes, event):
                return
            batch_id = event["batchId"]
            batch = touched.get(batch_id) or self._load(changes, batch_id)
            if batch is None:
                batch_type = event.get("batchType") or INGEST_BATCH
                if batch_type not in _TYPE_CODE:
                    return
                batch = self._register(changes, BatchMeta(
                    batch_id, event["partnerId"], event["tenantId"], event["schemaDefinitionId"],
                    int(event["recordCount"]), int(event["acceptedAt"]), batch_type))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a batch event of ours; nothing to count
        touched[batch_id] = batch
        if event.get("type") == "records":
            for entry in event.get("outcomes") or []:
                if isinstance(entry, dict):
                    batch.record(entry)

    @staticmethod
    def _load(changes: Changes, batch_id: str) -> BatchState | None:
        raw = changes.get(b"b" + batch_key(batch_id))
        return None if raw is None else BatchState.from_counters(raw, changes.get(b"s" + batch_key(batch_id)))

    def _register(self, changes: Changes, meta: BatchMeta) -> BatchState:
        batch = BatchState(meta.batchId, meta.partnerId, meta.tenantId, meta.schemaDefinitionId,
                           meta.recordCount, meta.acceptedAt, meta.batchType)
        batch.listed_status = batch.status
        _list(changes, batch, batch.status, +1)
        changes.put(expiring_key(batch), b"")
        _add_count(changes, _ACCEPTED_TOTAL, meta.recordCount)
        self._arrive(changes, meta)
        return batch

    @staticmethod
    def _write(changes: Changes, batch: BatchState) -> None:
        key = batch_key(batch.batchId)
        if batch.pending != batch.stored_pending:
            _add_count(changes, _PENDING_TOTAL, batch.pending - batch.stored_pending)
            batch.stored_pending = batch.pending
        if batch.outcomes != batch.stored_outcomes:
            _add_count(changes, _OUTCOMES_TOTAL, batch.outcomes - batch.stored_outcomes)
            batch.stored_outcomes = batch.outcomes
        status = batch.status
        if batch.listed_status is not None and status != batch.listed_status:
            _list(changes, batch, batch.listed_status, -1, only_by_status=True)
            _list(changes, batch, status, +1, only_by_status=True)
            batch.listed_status = status
        changes.put(b"b" + key, batch.counters())
        changes.put(b"s" + key, bytes(batch.states))
        for index, detail in batch.details.items():
            changes.put(b"f" + key + struct.pack(">I", index), orjson.dumps(detail))
        for index, detail in batch.succeeded_details.items():
            changes.put(b"k" + key + struct.pack(">I", index), orjson.dumps(detail))
        for index, event in batch.pending_details.items():
            changes.put(b"p" + key + struct.pack(">I", index), orjson.dumps(event))
        for index in batch.resolved_pending:
            changes.delete(b"p" + key + struct.pack(">I", index))

    def add(self, meta: BatchMeta) -> None:
        """Start tracking a batch (also called by the ingress that accepted it, for read-your-writes)."""
        changes = Changes(self.store)
        if self._load(changes, meta.batchId) is None:
            self._write(changes, self._register(changes, meta))
            self.store.write(changes)

    def get(self, partner_id: str, tenant_id: str, batch_id: str, details: bool = True) -> BatchState | None:
        """The batch, with its failure and pending details unless not `details`, if it is this tenant's."""
        key = batch_key(batch_id)
        raw = self.store.get(b"b" + key)
        if raw is None:
            return None
        batch = BatchState.from_counters(raw, self.store.get(b"s" + key))
        if (batch.partnerId, batch.tenantId) != (partner_id, tenant_id):
            return None
        if not details:
            return batch
        for prefix, into in ((b"f", batch.details), (b"p", batch.pending_details)):
            for k, v in self.store.items_from(prefix + key, prefix + key):
                into[struct.unpack(">I", k[-4:])[0]] = orjson.loads(v)
        return batch

    def records(self, batch: BatchState, status: str | None = None, after: int = -1) -> Iterator[dict[str, Any]]:
        """The outcomes of `batch`'s records that have one, in index order after index `after`:
        of one status (`RECORD_STATUSES`), or of all (None). A record the workers have not
        reached yet has none. Each: index, externalId, status, and code and message (failed),
        result (succeeded: created, updated or deleted), missingDependencies and expiresAt (pending)."""
        ident = batch_key(batch.batchId)
        chosen = RECORD_STATUSES if status is None else (status,)
        streams = [self._records_of(ident, name, after) for name in chosen]
        yield from streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda r: r["index"])

    def _records_of(self, ident: bytes, status: str, after: int) -> Iterator[dict[str, Any]]:
        prefix = _RECORD_PREFIX[status] + ident
        for key, value in self.store.items_from(prefix + struct.pack(">I", after + 1), prefix):
            detail = orjson.loads(value)
            record = {"index": struct.unpack(">I", key[-4:])[0], "externalId": detail.get("externalId"),
                      "status": status}
            if status == "failed":
                record.update(code=detail.get("code"), message=detail.get("message"))
            elif status == "succeeded":
                record["result"] = detail.get("result")
            else:
                record.update(missingDependencies=detail.get("missingDependencies", []),
                              expiresAt=detail.get("expiresAt"))
            yield record

    def page(self, partner_id: str, tenant_id: str, after: str | None, limit: int,
             batch_type: str | None = None, status: str | None = None) -> tuple[list[BatchState], int, bool]:
        """The tenant's batches of that type and status (None: any), newest first, after the
        batch `after`: (page, total, has_next_page)."""
        position = None
        if after is not None:
            cursor = self.get(partner_id, tenant_id, after)
            if cursor is None:
                return [], self.count(partner_id, tenant_id, batch_type, status), False
            position = (cursor.acceptedAt, cursor.batchId)
        return self.page_after(partner_id, tenant_id, position, limit, batch_type, status)

    def count(self, partner_id: str, tenant_id: str, batch_type: str | None = None, status: str | None = None) -> int:
        """How many of the tenant's batches are of that type and status (None: any)."""
        return self._total(_count_key(partner_id, tenant_id, batch_type, status))

    def page_after(self, partner_id: str, tenant_id: str, position: tuple[int, str] | None, limit: int,
                   batch_type: str | None = None, status: str | None = None) -> tuple[list[BatchState], int, bool]:
        """As `page`, after the list position (acceptedAt, batchId) of a batch — which need not
        be stored here (readers merge their shares of a list by it)."""
        prefix = _list_prefix(partner_id, tenant_id, batch_type, status)
        total = self.count(partner_id, tenant_id, batch_type, status)
        start = prefix
        if position is not None:
            start = _position(prefix, *position)
        found: list[BatchState] = []
        has_next = False
        for key, _ in self.store.items_from(start, prefix):
            if key == start and position is not None:
                continue
            if len(found) == limit:
                has_next = True
                break
            batch = self.get(partner_id, tenant_id, key[len(prefix) + 8:].decode())
            if batch is not None:
                found.append(batch)
        return found, total, has_next

    def expire(self, accepted_before_ms: int, chunk: int = 500) -> int:
        """Forget up to `chunk` batches accepted before the given time, oldest first; how many.

        Each is forgotten in one write: counters, record states, details, the tenant's list entry
        and count. Events of a forgotten batch that are read again (a new ingress reading the
        topic) would register it anew; the topic keeps them no longer than the store does.
        """
        changes = Changes(self.store)
        due = self._due(b"a", accepted_before_ms, chunk)
        for key in due:
            changes.delete(key)
            batch = self._load(changes, key[9:].decode())
            if batch is None:
                continue
            ident = batch_key(batch.batchId)
            for prefix in _RECORD_PREFIX.values():
                for detail, _ in self.store.items_from(prefix + ident, prefix + ident):
                    changes.delete(detail)
            changes.delete(b"b" + ident)
            changes.delete(b"s" + ident)
            if batch.stored_pending:
                _add_count(changes, _PENDING_TOTAL, -batch.stored_pending)
            _add_count(changes, _ACCEPTED_TOTAL, -batch.recordCount)
            _add_count(changes, _OUTCOMES_TOTAL, -batch.stored_outcomes)
            if batch.listed_status is not None:
                _list(changes, batch, batch.listed_status, -1)
        if due:
            self.store.write(changes)
        return len(due)

    def pending_total(self) -> int:
        """Records waiting for their references, in all batches."""
        return self._total(_PENDING_TOTAL)

    def backlog(self) -> int:
        """Records accepted that no worker has taken yet, in all batches."""
        return self._total(_ACCEPTED_TOTAL) - self._total(_OUTCOMES_TOTAL)

    def outcomes_total(self) -> int:
        """Records of the batches kept that a worker has taken (it falls as batches expire)."""
        return self._total(_OUTCOMES_TOTAL)

    def in_flight(self, partner_id: str, tenant_id: str) -> int:
        """The tenant's batches not yet finished (queued or processing)."""
        return sum(self._total(_count_key(partner_id, tenant_id, None, status)) for status in ("queued", "processing"))

    def _total(self, count_key: bytes) -> int:
        raw = self.store.get(count_key)
        return struct.unpack(">q", raw)[0] if raw else 0

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await super().stop()


# How an outcome message begins (`schemas.batch_events.outcomes`): the ledger passes over it unread.
