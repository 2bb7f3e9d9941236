"""A topic view kept in a checkpointed RocksDB store: what every read model of `state/` shares."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from state.store import Changes, CheckpointedStore, StoreConfig
from topics.partitioning import EVERY_PARTITION, Share
from topics.view import TopicView

_FORMAT = b"\x00format"
log = logging.getLogger(__name__)


class StoredView(TopicView):
    """Folds each fetch into one atomic write of the store, with the positions it reaches;
    starts reading where the store's positions say (from the beginning when it is new)."""

    # The layout of the store's keys; a store of another layout is dropped and read again from
    # the topic (no marker: the first layout).
    FORMAT = b"1"

    def __init__(self, bootstrap_servers: str, topic: str, path: Path, wait_s: float = 5.0,
                 config: StoreConfig = StoreConfig(), share: Share = EVERY_PARTITION) -> None:
        super().__init__(bootstrap_servers, topic, wait_s, share)
        self.store = CheckpointedStore(path, config)
        found = self.store.get(_FORMAT)
        if found is None and next(self.store.items_from(b"", b""), None) is not None:
            found = b"1"  # written before layouts were marked
        # A partition this process no longer follows would stay in its lists and counts.
        foreign = sorted(p for p in self.store.positions() if not share.owns(p))
        if found is not None and found != self.FORMAT:
            log.warning("the store %s has layout %s, not %s: reading %s again from the beginning",
                        path, found.decode(), self.FORMAT.decode(), topic)
        elif foreign:
            log.warning("the store %s holds partitions %s of %s, which this process no longer follows: "
                        "reading its partitions again from the beginning", path, foreign, topic)
        if (found is not None and found != self.FORMAT) or foreign:
            self.store.close()
            shutil.rmtree(path)
            self.store = CheckpointedStore(path, config)
        changes = Changes(self.store)
        changes.put(_FORMAT, self.FORMAT)
        self.store.write(changes)

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
