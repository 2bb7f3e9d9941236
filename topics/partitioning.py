"""Which partition a key goes to: Kafka's default rule (murmur2), as every client applies it.

All events of one resource must share a partition number across the keyed topics, whoever
produced them, so the ingress and the workers place keys exactly as Kafka's Java client and
aiokafka's `DefaultPartitioner` do. Kafka's hash is the standard 32-bit MurmurHash2 with the
seed below; `murmurhash2` computes it in native code (0.25 µs for a resource key, against 7 µs
in Python), which the ingress and the worker pay once per record.
"""

from __future__ import annotations

from dataclasses import dataclass

from murmurhash2 import murmurhash2

_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of `data` (unsigned)."""
    return murmurhash2(data, _SEED)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` in a topic of `partitions` partitions."""
    return (murmurhash2(key, _SEED) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Share:
    """The partitions one of `of` processes follows: those p with p % of == index."""

    index: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.of:
            raise ValueError(f"process index {self.index} is not one of 0..{self.of - 1}")

    def owns(self, partition: int) -> bool:
        return partition % self.of == self.index


EVERY_PARTITION = Share()
