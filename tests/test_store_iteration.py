"""Prefix reads of the RocksDB stores (`state.store.prefix_items`): exact, deleted keys or not."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.store import Changes, CheckpointedStore, prefix_end, prefix_items

# Short keys over few byte values, 0xff and 0x00 among them: prefixes, their neighbours and
# the carry of `prefix_end` all occur.
_keys = st.binary(min_size=1, max_size=4).map(lambda b: bytes(x % 4 * 85 for x in b))
_counter = itertools.count()


def _store(tmp_path: Path) -> CheckpointedStore:
    return CheckpointedStore(tmp_path / f"store-{next(_counter)}")


@given(prefix=_keys, key=_keys)
def test_prefix_end_is_after_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    end = prefix_end(prefix)
    if key.startswith(prefix):
        assert end is None or key < end, (prefix, key, end)
    elif key > prefix:
        assert end is not None and key >= end, (prefix, key, end)


# Each example opens its own store under tmp_path (`_store`): sharing the folder is safe.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.sets(_keys, max_size=30), deleted=st.sets(_keys, max_size=30), prefixes=st.lists(_keys, max_size=6))
def test_prefix_reads_find_exactly_the_live_keys_under_each_prefix(
        tmp_path: Path, kept: set[bytes], deleted: set[bytes], prefixes: list[bytes]) -> None:
    store = _store(tmp_path)
    try:
        changes = Changes(store)
        for key in kept | deleted:
            changes.put(b"k" + key, key)
        store.write(changes)
        changes = Changes(store)
        for key in deleted - kept:
            changes.delete(b"k" + key)
        store.write(changes)
        live = sorted(b"k" + k for k in kept)
        found = store.keys_with_prefixes([b"k" + p for p in prefixes])
        for prefix in prefixes:
            expected = [k for k in live if k.startswith(b"k" + prefix)]
            assert sorted(found[b"k" + prefix]) == expected, (prefix, found[b"k" + prefix], expected)
            assert [k for k, _ in store.items_from(b"k" + prefix, b"k" + prefix)] == expected
        for prefix in prefixes:  # the worker's tables read through it directly
            seen = [k for k, _ in prefix_items(store._db, b"k" + prefix)]
            assert seen == [k for k in live if k.startswith(b"k" + prefix)], (prefix, seen)
    finally:
        store.close()
