"""Which resources exist, as the worker learns from the resources topic (keys only)."""

from __future__ import annotations

from topics.view import TopicView


class ResourceKeys(TopicView):
    """Keys of every resource committed to the resources topic. Resources are never deleted,
    so a key seen once exists for good; a miss is confirmed against the topic's end first."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self._keys: set[bytes] = set()

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value is not None:
            self._keys.add(key)

    async def exists(self, key: bytes) -> bool:
        if key in self._keys:
            return True
        await self.sync()
        return key in self._keys
