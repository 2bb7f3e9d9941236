"""Which resources exist, as a worker learns from the resources topic: keys only, on disk.

A worker checks references to resources of any partition here. The keys live in a RocksDB
store with the topic positions they reflect (`state.store`), so memory does not grow with
the number of resources and a restart reads on from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from state.store import Changes, StoreConfig
from state.view import StoredView


class ResourceKeys(StoredView):
    """Keys of the resources committed to the resources topic and not deleted since.
    A miss is confirmed against the topic's end first."""

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig(block_cache_bytes=16 * 1024 * 1024)) -> None:
        super().__init__(bootstrap_servers, topic, path, wait_s, config)

    def fold(self, changes: Changes, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:  # a tombstone: the resource was deleted
            changes.delete(b"k" + key)
        else:
            changes.put(b"k" + key, b"")

    async def exists(self, key: bytes) -> bool:
        if self.store.get(b"k" + key) is not None:
            return True
        await self.sync()
        return self.store.get(b"k" + key) is not None

