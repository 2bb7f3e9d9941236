"""A RocksDB store for state folded from a Kafka topic, with the topic positions it reflects.

Every change is written in one RocksDB write batch together with the next offset to read of
each partition it came from, so the store on disk always reflects a prefix of the topic: a
process that starts again reads on from those positions instead of from the beginning. The
write-ahead log is off: after a crash the store is the last flushed prefix, still consistent
with its positions, and the topic has the rest.

Memory is bounded by configuration (block cache, write buffers), not by what is stored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

_POSITION = b"\x00position\x00"  # + partition (4 bytes, big-endian) -> next offset (8 bytes)
_NO_WAL = WriteOptions()
setattr(_NO_WAL, "disable_wal", True)  # noqa: B010 — a property; rocksdict's stub says a method


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key that begins with `prefix` (None: no key is after them all)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None


def _read_until(end: bytes | None) -> ReadOptions:
    """Read options whose iterators end before `end` (None: no bound). RocksDB keeps a pointer
    to the bound: the options must outlive their iterator (freed before it, prefix reads missed
    keys: tests/test_store_iteration.py)."""
    options = ReadOptions()
    if end is not None:
        options.set_iterate_upper_bound(end)
    return options


def prefix_items(db: Rdict, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of `db` in key order from `start` (default: `prefix`) while keys begin with
    `prefix`, read by an iterator bounded to them.

    Without the bound, a seek that finds no live key under its prefix walks on over every
    deleted key (tombstone) after it until it meets a live one: 1.4 ms per seek behind 100,000
    deletes, where a bounded seek takes 2 µs, and deletes of 100,000 resources ran at a third
    of their speed once a benchmark had deleted as many before.
    """
    options = _read_until(prefix_end(prefix))  # kept until the iteration ends
    it = db.iter(options)
    it.seek(prefix if start is None else start)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()


@dataclass(frozen=True)
class StoreConfig:
    """How much memory one store may use: its block cache and its write buffers."""

    block_cache_bytes: int = 32 * 1024 * 1024
    write_buffer_bytes: int = 16 * 1024 * 1024
    max_write_buffers: int = 2


class StoreInUse(RuntimeError):
    """Another process has the store open."""


class CheckpointedStore:
    """Sorted bytes keys to bytes values, with the topic positions they reflect."""

    def __init__(self, path: Path, config: StoreConfig = StoreConfig()) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(config.block_cache_bytes))
        table.set_cache_index_and_filter_blocks(True)  # index and filters count in the cache
        table.set_bloom_filter(10, False)  # a point read skips the files that lack its key
        # Partitioned: with one index block per file, a file of a large store has an index of
        # megabytes that the bounded cache evicts and reloads on every read (point reads of
        # existing keys ran at 2,000/s instead of 40,000/s); its top level stays pinned.
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_pin_top_level_index_and_filter(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(config.write_buffer_bytes)
        options.set_max_write_buffer_number(config.max_write_buffers)
        options.set_max_open_files(256)
        try:
            self._db = Rdict(str(path), options)
        except Exception as exc:  # RocksDB holds a lock file per store
            if "lock" in str(exc).lower():
                raise StoreInUse(f"the store {path} is open in another process; give each process "
                                 "its own data folder (REACH_DATA_DIR) or id") from exc
            raise
        self.path = path

    def positions(self) -> dict[int, int]:
        """The next offset to read per partition, as of the state on disk."""
        found = {}
        for key, value in self.items_from(_POSITION, _POSITION):
            found[struct.unpack(">I", key[len(_POSITION):])[0]] = struct.unpack(">q", value)[0]
        return found

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def items_from(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order from `start`, while keys begin with `prefix`."""
        return prefix_items(self._db, prefix, start)

    def keys_with_prefixes(self, prefixes: list[bytes]) -> dict[bytes, list[bytes]]:
        """Every key under each prefix: one iterator, bounded at the end of the prefixes' ranges,
        walking the prefixes in key order. A seek lands on the first live key at or after its
        prefix; the prefixes before that key have no keys and are not sought again, so deleted
        keys between them are walked over once (an iterator per prefix costs twice as much
        where nothing was deleted, and one seek per prefix walks over them each time)."""
        found: dict[bytes, list[bytes]] = {}
        ordered = sorted(set(prefixes))
        if not ordered:
            return found
        ends = [prefix_end(prefix) for prefix in ordered]  # a shorter prefix's range may end last
        options = _read_until(None if None in ends else max(ends))  # type: ignore[type-var]
        it = self._db.iter(options)
        previous: bytes | None = None
        for prefix in ordered:
            keys = found[prefix] = []
            # After the previous prefix's keys the iterator is at the first live key past them;
            # a prefix within the previous one's range (it begins with it) was passed: seek.
            if previous is None or prefix.startswith(previous) or (it.valid() and it.key() < prefix):
                it.seek(prefix)
            previous = prefix
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                keys.append(key)
                it.next()
        return found

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        # A list of keys gives the list of their values (rocksdict's stub has neither list's type right).
        return cast("list[bytes | None]", self._db.get(cast("list[Any]", keys))) if keys else []

    def write(self, batch: Changes) -> None:
        """Apply `batch` and its positions atomically."""
        for partition, offset in batch.positions.items():
            batch.batch.put(_POSITION + struct.pack(">I", partition), struct.pack(">q", offset))
        self._db.write(batch.batch, _NO_WAL)

    def close(self) -> None:
        """Flush the memtables (a clean stop then loses nothing) and close."""
        self._db.flush()
        self._db.close()


class Changes:
    """One atomic write: puts, deletes and the positions they bring the store to.

    `get` sees this write's own changes first, so several messages about one key fold correctly.
    """

    def __init__(self, store: CheckpointedStore) -> None:
        self.store = store
        self.batch = WriteBatch(raw_mode=True)
        self.positions: dict[int, int] = {}
        self._pending: dict[bytes, bytes | None] = {}
        self._read: dict[bytes, bytes | None] = {}

    def prefetch(self, keys: list[bytes]) -> None:
        """Read `keys` from the store with one multi-get, for the `get`s that follow."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self._pending and key not in self._read]
        self._read.update(zip(wanted, self.store.get_many(wanted)))

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        if key in self._read:
            return self._read[key]
        return self.store.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value
        self.batch.put(key, value)

    def delete(self, key: bytes) -> None:
        self._pending[key] = None
        self.batch.delete(key)

    def __len__(self) -> int:
        return len(self._pending)
