"""Who waits for which resource, kept on the partition of the resource waited for.

A record R that references a missing resource T sends a dependency request, keyed by T, to
the dependency-requests topic. That topic is co-partitioned with the ingest topic, so the
request reaches the agent that also applies T's own records, in one serial order: either T
exists already in its `resources` table (the request is answered at once) or the request
joins `waiters[T]`, and T's creation answers every request there. An answer is a
"resolved" notice on the waiter's own partition of the dependency-notices topic.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson

from processors.transactions import ExactlyOnce
from topics.definitions import ServiceTopics


class DependencyIndex:
    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, resources: faust.Table, waiters: faust.Table) -> None:
        self.eos, self.topics, self.resources, self.waiters = eos, topics, resources, waiters

    async def on_request(self, event: faust.EventT) -> None:
        """Record R waits for T (the event's key): answer now if T exists, else remember R."""
        request = orjson.loads(event.value)
        target: bytes = event.key
        if self.eos.get(event, self.resources, target) is not None:
            await self._notify(event, request)
            return
        waiters = self.eos.get(event, self.waiters, target) or []
        await self.eos.put(event, self.waiters, target, [*waiters, request])

    async def on_created(self, event: faust.EventT, target: bytes) -> None:
        """T was just created by `event`: answer everyone waiting for it."""
        waiters = self.eos.get(event, self.waiters, target)
        if not waiters:
            return
        await self.eos.delete(event, self.waiters, target)
        for request in waiters:
            await self._notify(event, request)

    async def _notify(self, event: faust.EventT, request: dict[str, Any]) -> None:
        notice = {"type": "resolved", "eventId": request["eventId"], "target": request["target"]}
        waiter = request["waiter"].encode()
        await self.eos.send(event, self.topics.dependency_notices.name, waiter, orjson.dumps(notice))
