"""The dependency agent: who waits for which resource, co-partitioned with that resource.

It consumes two topics keyed by a resource T, with equal partition counts: the resources
topic (the resource agent's output: T exists) and the dependency requests (record R waits
for T). Its table `dependents[T]` holds whether T exists and who waits for it. When T
appears, every waiter gets a "resolved" notice on its own partition; a request for a T that
exists already is answered at once.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson

from processors.transactions import ExactlyOnce
from topics.definitions import ServiceTopics


class DependencyIndex:
    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, dependents: faust.Table) -> None:
        self.eos, self.topics, self.dependents = eos, topics, dependents

    async def on_request(self, event: faust.EventT) -> None:
        request = orjson.loads(event.value)
        target: bytes = event.key
        entry = self.dependents.get(target) or {"exists": False, "waiters": []}
        if entry["exists"]:
            await self._notify(event, request)
            return
        entry["waiters"].append(request)
        await self.eos.put(event, self.dependents, target, entry)

    async def on_resource(self, event: faust.EventT) -> None:
        target: bytes = event.key
        entry = self.dependents.get(target)
        if entry is not None and entry["exists"]:
            return
        await self.eos.put(event, self.dependents, target, {"exists": True, "waiters": []})
        for request in (entry or {}).get("waiters", []):
            await self._notify(event, request)

    async def _notify(self, event: faust.EventT, request: dict[str, Any]) -> None:
        notice = {"type": "resolved", "eventId": request["eventId"], "target": request["target"]}
        waiter = request["waiter"].encode()
        await self.eos.send(event, self.topics.dependency_notices.name, waiter, orjson.dumps(notice))
