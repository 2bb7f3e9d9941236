"""Which resources exist, as a worker learns from the resources topic: keys only, on disk.

A worker checks references to resources of any partition here. The keys live in a RocksDB
store with the topic positions they reflect (`state.store`), so memory does not grow with
the number of resources and a restart reads on from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from state.store import Changes, CheckpointedStore, StoreConfig
from topics.view import TopicView


class ResourceKeys(TopicView):
    """Keys of the resources committed to the resources topic and not deleted since.
    A miss is confirmed against the topic's end first."""

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig(block_cache_bytes=16 * 1024 * 1024)) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self.store = CheckpointedStore(path, config)

    def initial_positions(self) -> dict[int, int]:
        return self.store.positions()

    def apply_all(self, batches: dict[TopicPartition, list[ConsumerRecord]],
                  positions: dict[TopicPartition, int]) -> None:
        changes = Changes(self.store)
        for messages in batches.values():
            for message in messages:
                if message.key is None:
                    continue
                if message.value is None:  # a tombstone: the resource was deleted
                    changes.delete(b"k" + message.key)
                else:
                    changes.put(b"k" + message.key, b"")
        changes.positions = {tp.partition: offset for tp, offset in positions.items()}
        self.store.write(changes)

    async def exists(self, key: bytes) -> bool:
        if self.store.get(b"k" + key) is not None:
            return True
        await self.sync()
        return self.store.get(b"k" + key) is not None

    async def stop(self) -> None:
        await super().stop()
        self.store.close()
