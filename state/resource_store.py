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

import orjson
from aiokafka.structs import ConsumerRecord

from schemas.events import Resource, resource_key, resource_key_parts
from state.store import Changes, StoreConfig
from state.view import StoredView
from topics.partitioning import EVERY_PARTITION, Share

# The keys a resource stored without `references` names (from its schema definition).
ReferencesOf = Callable[[Resource], list[str]]


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

    def fold_all(self, changes: Changes, messages: list[ConsumerRecord]) -> None:
        # One multi-get for the fetch's stored resources, and each scope's count read and
        # written once per fetch: per message they were a third of the fold.
        folds = [fold for message in messages if (fold := self._parse(message.key, message.value)) is not None]
        changes.prefetch([item for item, *_ in folds])
        counts: dict[bytes, int] = {}
        for fold in folds:
            self._fold(changes, counts, *fold)
        for scope, delta in counts.items():
            if delta:
                self._count(changes, scope, delta)

    @staticmethod
    def _parse(key: bytes | None, value: bytes | None
               ) -> tuple[bytes, bytes, bytes, Resource | None, bytes | None] | None:
        """(where it is stored, its scope, its key, the resource or None if deleted, the value)."""
        if value is not None:
            resource = orjson.loads(value)
            scope = _scope(resource["platformId"], resource["businessId"], resource["schemaDefinitionId"])
            external_id = resource["resourceExternalId"]
            # The message's key is the resource's (the workers' table key); built only if absent.
            referrer = key if key is not None else resource_key(
                resource["platformId"], resource["businessId"], resource["schemaDefinitionId"], external_id)
            return _item(scope, external_id), scope, referrer, resource, value
        if key is None:
            return None
        try:  # a tombstone: the resource was deleted
            partner_id, tenant_id, definition_id, external_id = resource_key_parts(key)
        except ValueError:
            return None
        scope = _scope(partner_id, tenant_id, definition_id)
        return _item(scope, external_id), scope, key, None, None

    def _fold(self, changes: Changes, counts: dict[bytes, int], item: bytes, scope: bytes, referrer: bytes,
              resource: Resource | None, value: bytes | None) -> None:
        old = changes.get(item)
        if value is not None:
            changes.put(item, value)
            if old is None:
                counts[scope] = counts.get(scope, 0) + 1
        elif old is not None:
            changes.delete(item)
            counts[scope] = counts.get(scope, 0) - 1
        before = set(self._references(orjson.loads(old))) if old is not None else set()
        after = set(self._references(resource)) if resource is not None else set()
        if not before and not after:
            return
        for target in before - after:
            changes.delete(b"x" + target.encode() + b"\x00" + referrer)
        for target in after - before:
            changes.put(b"x" + target.encode() + b"\x00" + referrer, b"")

    def _references(self, resource: Resource) -> list[str]:
        if "references" in resource:
            return resource["references"]
        return self.references_of(resource) if self.references_of is not None else []

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
