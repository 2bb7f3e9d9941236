"""The resources read model: the latest state of every resource, from the resources topic.

Why a read model rather than routing reads to the worker that owns a key: reads then never
depend on which worker owns a partition or on a rebalance in progress, any number of
ingresses can serve them, and `sync()` makes a read see everything the workers committed
before it (a batch that is terminal has all its successful records readable).
"""

from __future__ import annotations

import bisect
from typing import Any

import orjson

from topics.view import TopicView

Resource = dict[str, Any]


class ResourceView(TopicView):
    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        # (partner, tenant, schemaDefinitionId) -> externalId -> resource
        self._by_scope: dict[tuple[str, str, str], dict[str, Resource]] = {}

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        resource = orjson.loads(value)
        scope = (resource["platformId"], resource["businessId"], resource["schemaDefinitionId"])
        self._by_scope.setdefault(scope, {})[resource["resourceExternalId"]] = resource

    def get(self, partner_id: str, tenant_id: str, definition_id: str, external_id: str) -> Resource | None:
        return self._by_scope.get((partner_id, tenant_id, definition_id), {}).get(external_id)

    def page(self, partner_id: str, tenant_id: str, definition_id: str, after: str | None,
             limit: int) -> tuple[list[Resource], int, bool]:
        """Resources ordered by external id after `after`: (page, total, has_next_page)."""
        scope = self._by_scope.get((partner_id, tenant_id, definition_id), {})
        ids = sorted(scope)
        start = 0 if after is None else bisect.bisect_right(ids, after)
        chosen = ids[start:start + limit]
        return [scope[i] for i in chosen], len(ids), start + limit < len(ids)
