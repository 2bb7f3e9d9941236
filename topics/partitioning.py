"""Which partition a key goes to: Kafka's default rule (murmur2), as every client applies it.

All events of one resource must share a partition number across the keyed topics, whoever
produced them, so the ingress and the workers place keys exactly as Kafka's Java client and
aiokafka's `DefaultPartitioner` do. This implementation reads the key four bytes at a time:
about half the cost of aiokafka's byte-by-byte one, which the ingress pays once per record.
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS: dict[int, struct.Struct] = {}  # number of 4-byte words -> their little-endian reader


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of `data` (unsigned)."""
    length = len(data)
    count = length >> 2
    words = _WORDS.get(count)
    if words is None:
        words = _WORDS[count] = struct.Struct(f"<{count}I")
    h = _SEED ^ length
    for k in words.unpack_from(data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = count << 2
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` in a topic of `partitions` partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
