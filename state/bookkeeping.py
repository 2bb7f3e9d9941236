"""What every process that follows the batch-events topic keeps per batch, never per record:
idempotency keys (the rule that decides who holds one, from the topic's order alone), each
tenant's theoretical arrival time for its records quota, and when batches expire.

`Bookkeeping` is the base of the readers' `state.batch_store.BatchStore` and of the ingresses'
`BatchLedger`. Its keys (`state.store`, sorted): `q` + tenant → the tenant's theoretical
arrival time (`ingest.quotas`, when it has a records quota); `i` + tenant + NUL + idempotency
key → its entry (the claim that holds it, and the batch once accepted), and `j` + claim time +
that entry's key → nothing, the order in which keys expire; `a` + accepted time + id →
nothing, the order in which batches expire.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import orjson
from aiokafka.structs import ConsumerRecord

from schemas.batch_events import (
    BatchMeta,
    IdempotencyClaim,
)
from state.batch_state import BatchState
from state.store import Changes, StoreConfig
from state.view import StoredView
from topics.partitioning import EVERY_PARTITION, Share

EXPIRY_INTERVAL_S = 60.0  # how often batches past their retention are looked for
log = logging.getLogger(__name__)


def batch_key(batch_id: str) -> bytes:
    return batch_id.encode() + b"\x00"


def tenant_key(partner_id: str, tenant_id: str) -> bytes:
    return orjson.dumps([partner_id, tenant_id])


def _key_entry(partner_id: str, tenant_id: str, key: str) -> bytes:
    return b"i" + tenant_key(partner_id, tenant_id) + b"\x00" + key.encode()


def _arrival_key(partner_id: str, tenant_id: str) -> bytes:
    return b"q" + tenant_key(partner_id, tenant_id)


def expiring_key(batch: BatchState | BatchMeta) -> bytes:
    return b"a" + struct.pack(">Q", batch.acceptedAt) + batch.batchId.encode()



class KeyEntry(TypedDict):
    """What holds an idempotency key of a tenant: the claim that holds it, and once its batch is
    accepted, that batch (a `BatchMeta`'s fields)."""

    claimant: str
    fingerprint: str
    at: int  # epoch ms of the claim
    batch: dict[str, Any] | None


class Bookkeeping(StoredView):
    """What both stores of the batch-events topic keep: idempotency keys and each tenant's
    records quota (its arrival time), decided by the topic's order alone."""

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig(), retention_s: float | None = None,
                 idempotency_ttl_s: float = 24 * 3600, claim_stale_s: float = 60.0,
                 record_spacing_ms: Callable[[str], float | None] = lambda partner_id: None,
                 share: Share = EVERY_PARTITION) -> None:
        super().__init__(bootstrap_servers, topic, path, wait_s, config, share)
        # A partner's tenants' records quota as the time one record takes of it (None: no quota).
        self.record_spacing_ms = record_spacing_ms
        self.retention_s = retention_s  # None: batches are kept for ever
        self.idempotency_ttl_ms = int(idempotency_ttl_s * 1000)  # how long a key stays taken
        # How long a claim whose batch was never accepted nor released (its ingress died) holds
        # its key against later claims; longer than an upload may take to commit.
        self.claim_stale_ms = int(claim_stale_s * 1000)
        self._expiry: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 60.0) -> None:
        await super().start(timeout_s)
        self._expiry = asyncio.create_task(self._expire_old(self.retention_s), name="batches:expiry")

    async def _expire_old(self, retention_s: float | None) -> None:
        while True:
            try:
                # In chunks, so that requests are served in between.
                while retention_s is not None and self.expire(int((time.time() - retention_s) * 1000)):
                    await asyncio.sleep(0)
                while self.expire_keys(int(time.time() * 1000) - self.idempotency_ttl_ms):
                    await asyncio.sleep(0)
            except Exception:  # a disk error: try again at the next round
                log.exception("expiring old batches failed")
            await asyncio.sleep(EXPIRY_INTERVAL_S)

    def expire(self, accepted_before_ms: int, chunk: int = 500) -> int:
        """Forget up to `chunk` batches accepted before the given time, oldest first; how many (subclasses)."""
        raise NotImplementedError

    def _fold_bookkeeping(self, changes: Changes, event: dict[str, Any]) -> bool:
        """Fold what an event says of idempotency keys; True if that is all it says (a claim or
        a release), False for a registration or an outcome message."""
        if event.get("type") in ("claim", "release"):
            self._fold_claim(changes, IdempotencyClaim.of_event(event), event["type"] == "release")
            return True
        if isinstance(event.get("idempotency"), dict):
            self._key_taken(changes, IdempotencyClaim.of_event(event["idempotency"]), BatchMeta.of_event(event))
        return False

    def _arrive(self, changes: Changes, meta: BatchMeta) -> None:
        """GCRA: the tenant's records quota is used up to this time (`ingest.quotas` decides with it)."""
        spacing = self.record_spacing_ms(meta.partnerId)
        if spacing is not None:
            where = _arrival_key(meta.partnerId, meta.tenantId)
            raw = changes.get(where)
            arrival = max(struct.unpack(">d", raw)[0] if raw else 0.0, float(meta.acceptedAt))
            changes.put(where, struct.pack(">d", arrival + meta.recordCount * spacing))

    def arrival(self, partner_id: str, tenant_id: str) -> float:
        """The tenant's theoretical arrival time (ms): its records quota is used up to then."""
        raw = self.store.get(_arrival_key(partner_id, tenant_id))
        return struct.unpack(">d", raw)[0] if raw else 0.0

    # -- idempotency keys -------------------------------------------------------------------
    # Decided by the order of the topic alone, so that every ingress decides the same: the
    # first claim of a key holds it until its batch is accepted (the key is then taken until it
    # expires), or it is released, or a later claim comes when it is stale.

    def after_claim(self, entry: KeyEntry | None, claim: IdempotencyClaim,
                    released: bool) -> KeyEntry | None:
        """A key's entry after a claim of it (or its release) — the rule every reader of the
        topic applies (this store's fold, and `ingest.idempotency` reading ahead of it)."""
        if released:
            mine = entry is not None and entry.get("batch") is None and entry["claimant"] == claim.claimant
            return None if mine else entry
        if entry is not None:
            age = claim.at - entry["at"]
            if age < (self.idempotency_ttl_ms if entry.get("batch") is not None else self.claim_stale_ms):
                return entry  # held: by an accepted batch, or by a claim in flight
        return {"claimant": claim.claimant, "fingerprint": claim.fingerprint, "at": claim.at, "batch": None}

    def _fold_claim(self, changes: Changes, claim: IdempotencyClaim, released: bool) -> None:
        where = _key_entry(claim.partnerId, claim.tenantId, claim.key)
        raw = changes.get(where)
        entry: KeyEntry | None = orjson.loads(raw) if raw is not None else None
        new = self.after_claim(entry, claim, released)
        if new is not entry:
            self._put_entry(changes, where, entry, new)

    def _key_taken(self, changes: Changes, claim: IdempotencyClaim, meta: BatchMeta) -> None:
        """The batch of `claim` was accepted: it holds the key (whatever claims came meanwhile:
        a batch in Kafka is what a retry must find)."""
        where = _key_entry(claim.partnerId, claim.tenantId, claim.key)
        raw = changes.get(where)
        entry: KeyEntry | None = orjson.loads(raw) if raw is not None else None
        self._put_entry(changes, where, entry, {"claimant": claim.claimant, "fingerprint": claim.fingerprint,
                                                "at": claim.at, "batch": asdict(meta)})

    @staticmethod
    def _put_entry(changes: Changes, where: bytes, old: KeyEntry | None, new: KeyEntry | None) -> None:
        if old is not None:
            changes.delete(b"j" + struct.pack(">Q", old["at"]) + where)
        if new is None:
            changes.delete(where)
            return
        changes.put(where, orjson.dumps(new))
        changes.put(b"j" + struct.pack(">Q", new["at"]) + where, b"")

    def take_key(self, claim: IdempotencyClaim, meta: BatchMeta) -> None:
        """Record that `meta`'s batch took the key of `claim` (called by the ingress that accepted
        it: Kafka makes a committed transaction readable moments after the commit returns)."""
        changes = Changes(self.store)
        self._key_taken(changes, claim, meta)
        self.store.write(changes)

    def key_entry_at(self, partner_id: str, tenant_id: str, key: str,
                     partition: int) -> tuple[KeyEntry | None, int]:
        """`key_entry`, and the next offset of `partition` this store has not folded yet (read
        together: what the entry reflects of that partition)."""
        return self.key_entry(partner_id, tenant_id, key), self.store.positions().get(partition, 0)

    def key_entry(self, partner_id: str, tenant_id: str, key: str) -> KeyEntry | None:
        """What holds an idempotency key of a tenant; None if nothing does (or no longer)."""
        raw = self.store.get(_key_entry(partner_id, tenant_id, key))
        if raw is None:
            return None
        entry: KeyEntry = orjson.loads(raw)
        if entry.get("batch") is not None and entry["at"] <= time.time() * 1000 - self.idempotency_ttl_ms:
            return None  # expired, not yet swept
        return entry

    def expire_keys(self, before_ms: int, chunk: int = 500) -> int:
        """Forget up to `chunk` idempotency entries claimed before `before_ms`; how many."""
        changes = Changes(self.store)
        due = self._due(b"j", before_ms, chunk)
        for key in due:
            changes.delete(key)
            changes.delete(key[9:])
        if due:
            self.store.write(changes)
        return len(due)

    def _due(self, prefix: bytes, before_ms: int, chunk: int) -> list[bytes]:
        """Up to `chunk` keys of a time index (`prefix` + 8-byte time + ...) older than `before_ms`, oldest first."""
        due: list[bytes] = []
        for key, _ in self.store.items_from(prefix, prefix):
            if struct.unpack(">Q", key[1:9])[0] >= before_ms or len(due) == chunk:
                break
            due.append(key)
        return due


_OUTCOMES_PREFIX = b'{"type":"records"'


class BatchLedger(Bookkeeping):
    """What every ingress keeps of all batches: their idempotency keys and each tenant's records
    quota — per batch, never per record (the records' outcomes are the readers', `BatchStore`).

    Layout: `b` + id → nothing (the batch was counted), `a` + accepted time + id → nothing (when
    it expires), and the `Bookkeeping` keys. An outcome message is recognised by its first bytes
    and passed over without decoding it.
    """

    FORMAT = b"L1"

    def fold_all(self, changes: Changes, messages: list[ConsumerRecord]) -> None:
        for message in messages:
            value = message.value
            if value is None or value.startswith(_OUTCOMES_PREFIX):
                continue
            try:
                event = orjson.loads(value)
                if self._fold_bookkeeping(changes, event) or event.get("type") == "records":
                    continue  # a claim, or an outcome message written by something else than our workers
                meta = BatchMeta.of_event(event)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not a batch event of ours
            self._count(changes, meta)

    def _count(self, changes: Changes, meta: BatchMeta) -> None:
        ident = b"b" + batch_key(meta.batchId)
        if changes.get(ident) is not None:
            return  # counted already (the ingress that accepted it adds it at once)
        changes.put(ident, b"")
        changes.put(expiring_key(meta), b"")
        self._arrive(changes, meta)

    def add(self, meta: BatchMeta) -> None:
        """Count a batch this ingress accepted (its arrival holds at once for the tenant's quota)."""
        changes = Changes(self.store)
        self._count(changes, meta)
        self.store.write(changes)

    def expire(self, accepted_before_ms: int, chunk: int = 500) -> int:
        changes = Changes(self.store)
        due = self._due(b"a", accepted_before_ms, chunk)
        for key in due:
            changes.delete(key)
            changes.delete(b"b" + batch_key(key[9:].decode()))
        if due:
            self.store.write(changes)
        return len(due)
