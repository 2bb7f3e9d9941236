"""The resources read model: the latest state of every resource, on disk, from the resources topic.

Why a read model rather than routing reads to the worker that owns a key: reads then never
depend on which worker owns a partition or on a rebalance in progress, any number of
ingresses can serve them, and `sync()` makes a read see everything the workers committed
before it (a batch that is terminal has all its successful records readable).

Layout, sorted as RocksDB keeps it: a resource under `r` + scope + NUL + external id (the
message's JSON as it came), so a scope's resources sit together in external id order and a
page is one seek and `limit` steps at any depth; each scope's count under `c` + scope. A
scope is `[partner, tenant, schemaDefinitionId]` in JSON, which cannot contain NUL.
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import unquote

import orjson

from state.store import Changes
from state.view import StoredView

Resource = dict[str, Any]


def _scope(partner_id: str, tenant_id: str, definition_id: str) -> bytes:
    return orjson.dumps([partner_id, tenant_id, definition_id])


class ResourceStore(StoredView):
    """Every resource's latest state, by scope and external id."""

    def fold(self, changes: Changes, key: bytes | None, value: bytes | None) -> None:
        if value is not None:
            resource = orjson.loads(value)
            scope = _scope(resource["platformId"], resource["businessId"], resource["schemaDefinitionId"])
            external_id = resource["resourceExternalId"]
        elif key is not None:  # a tombstone: the resource was deleted
            parts = [unquote(p) for p in key.decode().split("/")]
            if len(parts) != 4:
                return
            scope, external_id = _scope(*parts[:3]), parts[3]
        else:
            return
        item = b"r" + scope + b"\x00" + external_id.encode()
        existed = changes.get(item) is not None
        if value is not None:
            changes.put(item, value)
            if not existed:
                self._count(changes, scope, +1)
        elif existed:
            changes.delete(item)
            self._count(changes, scope, -1)

    @staticmethod
    def _count(changes: Changes, scope: bytes, delta: int) -> None:
        key = b"c" + scope
        raw = changes.get(key)
        changes.put(key, struct.pack(">q", (struct.unpack(">q", raw)[0] if raw else 0) + delta))

    def get(self, partner_id: str, tenant_id: str, definition_id: str, external_id: str) -> Resource | None:
        raw = self.store.get(b"r" + _scope(partner_id, tenant_id, definition_id) + b"\x00" + external_id.encode())
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
