"""The resources read model: the latest state of every resource, on disk, from the resources topic.

Why a read model rather than routing reads to the worker that owns a key: reads then never
depend on which worker owns a partition or on a rebalance in progress, any number of
ingresses can serve them, and `sync()` makes a read see everything the workers committed
before it (a batch that is terminal has all its successful records readable).

Layout, sorted as RocksDB keeps it: a resource under `r` + scope + NUL + external id (the
message's JSON as it came), so a scope's resources sit together in external id order and a
page is one seek and `limit` steps at any depth; each scope's count under `c` + scope. A
scope is `[partner, tenant, schemaDefinitionId]` in JSON, which cannot contain NUL.

Who references whom, the other way round: `x` + referenced resource key + NUL + referrer key,
from the `references` the workers store with each resource (or, for resources stored before
they did, from the definition), so that a delete's dry run can follow referrers with one seek
per resource.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, cast
from urllib.parse import unquote

import orjson
from aiokafka.structs import ConsumerRecord

from schemas.events import Resource, resource_key, resource_key_parts
from state.store import Changes, StoreConfig
from state.view import StoredView
from topics.partitioning import EVERY_PARTITION, Share

# The keys a resource stored without `references` names (from its schema definition): given its
# partner, its schema definition id and the stored JSON, so that it parses only what may reference.
ReferencesOf = Callable[[str, str, bytes], list[str]]


SCOPES_KEPT = 10_000  # scopes remembered by the fold (`ResourceStore._parse`): tenants x definitions


class _Fold(NamedTuple):
    """One message of the resources topic, placed: where its resource is stored, and what it is."""

    item: bytes  # where it is stored
    scope: bytes
    key: bytes  # the resource's key (the workers' table key)
    value: bytes | None  # None: deleted
    partner_id: str
    definition_id: str


def _scope(partner_id: str, tenant_id: str, definition_id: str) -> bytes:
    return orjson.dumps([partner_id, tenant_id, definition_id])


def _item(scope: bytes, external_id: str) -> bytes:
    """Where a resource is stored: "r", its scope, NUL, its external id."""
    return b"r" + scope + b"\x00" + external_id.encode()


class ResourceStore(StoredView):
    """Every resource's latest state, by scope and external id, and who references it."""

    FORMAT = b"2"  # 2: the reverse index

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig(), references_of: ReferencesOf | None = None,
                 share: Share = EVERY_PARTITION) -> None:
        super().__init__(bootstrap_servers, topic, path, wait_s, config, share)
        self.references_of = references_of
        # A resource key up to its external id -> (its scope, its partner, its definition id).
        self._scopes: dict[bytes, tuple[bytes, str, str]] = {}

    def fold_all(self, changes: Changes, messages: list[ConsumerRecord]) -> None:
        # One multi-get for the fetch's stored resources, and each scope's count read and
        # written once per fetch: per message they were a third of the fold.
        folds = [fold for message in messages if (fold := self._parse(message.key, message.value)) is not None]
        changes.prefetch([fold.item for fold in folds])
        counts: dict[bytes, int] = {}
        for fold in folds:
            self._fold(changes, counts, fold)
        for scope, delta in counts.items():
            if delta:
                self._count(changes, scope, delta)

    def _parse(self, key: bytes | None, value: bytes | None) -> _Fold | None:
        """Where a message's resource is stored, and what it is. A resource's place comes from
        its key, the workers' table key, which names what the value holds: the value is parsed
        only for a message without one."""
        if key is not None:
            slash = key.rfind(b"/")
            known = self._scopes.get(key[:slash])
            if known is None:
                try:
                    partner_id, tenant_id, definition_id, _ = resource_key_parts(key)
                except ValueError:
                    partner_id = ""  # not a resource's key: the value says which resource it is
                if partner_id:
                    if len(self._scopes) >= SCOPES_KEPT:
                        self._scopes.clear()
                    known = self._scopes[key[:slash]] = (_scope(partner_id, tenant_id, definition_id), partner_id,
                                                         definition_id)
            if known is not None:
                scope, partner_id, definition_id = known
                external_id = key[slash + 1:].decode()
                return _Fold(_item(scope, unquote(external_id) if "%" in external_id else external_id), scope,
                             key, value, partner_id, definition_id)
        if value is None:
            return None
        resource = orjson.loads(value)
        partner_id, tenant_id, definition_id, external_id = (
            resource["platformId"], resource["businessId"], resource["schemaDefinitionId"],
            resource["resourceExternalId"])
        scope = _scope(partner_id, tenant_id, definition_id)
        return _Fold(_item(scope, external_id), scope, resource_key(partner_id, tenant_id, definition_id, external_id),
                     value, partner_id, definition_id)

    def _fold(self, changes: Changes, counts: dict[bytes, int], fold: _Fold) -> None:
        item, scope, referrer, value = fold.item, fold.scope, fold.key, fold.value
        old = changes.get(item)
        if value is not None:
            changes.put(item, value)
            if old is None:
                counts[scope] = counts.get(scope, 0) + 1
        elif old is not None:
            changes.delete(item)
            counts[scope] = counts.get(scope, 0) - 1
        if old is None and value is None:
            return
        before = set(self._references(fold, old)) if old is not None else set()
        after = set(self._references(fold, value)) if value is not None else set()
        if not before and not after:
            return
        for target in before - after:
            changes.delete(b"x" + target.encode() + b"\x00" + referrer)
        for target in after - before:
            changes.put(b"x" + target.encode() + b"\x00" + referrer, b"")

    def _references(self, fold: _Fold, raw: bytes) -> list[str]:
        """The keys the stored resource `raw` (of `fold`'s resource) references."""
        if b'"references"' in raw:  # else it has no such member: a JSON parse spared per resource
            found = orjson.loads(raw).get("references")
            if found is not None:
                return cast(list[str], found)
        if self.references_of is None:
            return []
        return self.references_of(fold.partner_id, fold.definition_id, raw)

    def referrers_of_many(self, keys: list[bytes]) -> dict[bytes, list[bytes]]:
        """The keys of the resources that reference each resource of `keys` (itself excluded),
        read with one iterator."""
        prefixes = {b"x" + key + b"\x00": key for key in keys}
        found = self.store.keys_with_prefixes(list(prefixes))
        return {prefixes[p]: [k[len(p):] for k in found[p] if k[len(p):] != prefixes[p]] for p in prefixes}

    def exist(self, keys: list[bytes]) -> list[bool]:
        """Whether each resource key is stored (one multi-get)."""
        items = []
        for key in keys:
            try:
                partner_id, tenant_id, definition_id, external_id = resource_key_parts(key)
            except ValueError:
                items.append(b"")  # not a resource key: nothing is stored under it
                continue
            items.append(_item(_scope(partner_id, tenant_id, definition_id), external_id))
        return [value is not None for value in self.store.get_many(items)]

    def external_ids(self, partner_id: str, tenant_id: str, definition_id: str) -> Iterator[str]:
        """Every external id of a scope, in order."""
        prefix = b"r" + _scope(partner_id, tenant_id, definition_id) + b"\x00"
        for found, _ in self.store.items_from(prefix, prefix):
            yield found[len(prefix):].decode()

    def count(self, partner_id: str, tenant_id: str, definition_id: str) -> int:
        raw = self.store.get(b"c" + _scope(partner_id, tenant_id, definition_id))
        return struct.unpack(">q", raw)[0] if raw else 0

    @staticmethod
    def _count(changes: Changes, scope: bytes, delta: int) -> None:
        key = b"c" + scope
        raw = changes.get(key)
        changes.put(key, struct.pack(">q", (struct.unpack(">q", raw)[0] if raw else 0) + delta))

    def get(self, partner_id: str, tenant_id: str, definition_id: str, external_id: str) -> Resource | None:
        raw = self.store.get(_item(_scope(partner_id, tenant_id, definition_id), external_id))
        return None if raw is None else orjson.loads(raw)

    def page(self, partner_id: str, tenant_id: str, definition_id: str, after: str | None,
             limit: int) -> tuple[list[Resource], int, bool]:
        """Resources ordered by external id after `after`: (page, total, has_next_page)."""
        scope = _scope(partner_id, tenant_id, definition_id)
        prefix = b"r" + scope + b"\x00"
        start = prefix + (after.encode() if after is not None else b"")
        found: list[Resource] = []
        has_next = False
        for key, value in self.store.items_from(start, prefix):
            if after is not None and key == start:
                continue  # strictly after the cursor
            if len(found) == limit:
                has_next = True
                break
            found.append(orjson.loads(value))
        raw = self.store.get(b"c" + scope)
        return found, struct.unpack(">q", raw)[0] if raw else 0, has_next
