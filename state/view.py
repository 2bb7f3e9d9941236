"""A topic view kept in a checkpointed RocksDB store: what every read model of `state/` shares."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from state.store import Changes, CheckpointedStore, StoreConfig
from topics.view import TopicView


class StoredView(TopicView):
    """Folds each fetch into one atomic write of the store, with the positions it reaches;
    starts reading where the store's positions say (from the beginning when it is new)."""

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig()) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self.store = CheckpointedStore(path, config)

    def initial_positions(self) -> dict[int, int]:
        return self.store.positions()

    def apply_all(self, batches: dict[TopicPartition, list[ConsumerRecord]],
                  positions: dict[TopicPartition, int]) -> None:
        changes = Changes(self.store)
        self.fold_all(changes, [message for messages in batches.values() for message in messages])
        changes.positions = {tp.partition: offset for tp, offset in positions.items()}
        self.store.write(changes)

    def fold_all(self, changes: Changes, messages: list[ConsumerRecord]) -> None:
        """Fold one fetch's messages, in order per partition, into `changes`."""
        for message in messages:
            self.fold(changes, message.key, message.value)

    def fold(self, changes: Changes, key: bytes | None, value: bytes | None) -> None:
        """Fold one message (subclasses)."""
        raise NotImplementedError

    async def stop(self) -> None:
        await super().stop()
        self.store.close()
