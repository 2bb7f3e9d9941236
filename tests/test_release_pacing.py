"""What a creation that answers waiting records asks of the commit pacer (`DependencyIndex.on_created`,
`processors.commit_pacing`): a commit soon where an answer leaves through the topic, and none of its
own where every answer is made in place (the released record asks for itself: one count toward
`RELEASE_RATE` per release, not two)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from processors.dependencies import DependencyIndex
from processors.in_place import InPlace
from topics.partitioning import partition_for

PARTITIONS = 8


class _Tables:
    """The worker's tables as `TableOverlay` reads and writes them, in dicts (no transaction)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, bytes], Any] = {}

    def get(self, event: Any, table: Any, key: bytes) -> Any:
        return self.data.get((table.name, key))

    def has(self, event: Any, table: Any, key: bytes) -> bool:
        return (table.name, key) in self.data

    async def put(self, event: Any, table: Any, key: bytes, value: Any) -> None:
        self.data[(table.name, key)] = value

    async def delete(self, event: Any, table: Any, key: bytes) -> None:
        self.data.pop((table.name, key), None)


class _Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send_item(self, event: Any, topic: str, key: bytes, value: dict[str, Any]) -> None:
        self.sent.append((topic, key, value))


def _key_on(partition: int, name: str) -> bytes:
    """A resource key of `name`'s kind that hashes to `partition`."""
    keys = (f"p/t/d/{name}-{i}".encode() for i in range(10_000))
    return next(key for key in keys if partition_for(key, PARTITIONS) == partition)


def _created_with_waiters(waiter_partitions: list[int]) -> tuple[int, list[Any], _Outputs]:
    """Create a target on partition 0 that the records on `waiter_partitions` wait for; return how
    many commits it asked for, the answers made in place, and what it sent."""
    releases: list[None] = []
    tables, outputs = _Tables(), _Outputs()
    # No partition but the event's own is written in place (no barrier known: `InPlace.allows`).
    eos = SimpleNamespace(tables=tables, outputs=outputs, in_place=InPlace("requests", {}))
    topics = SimpleNamespace(dependency_notices=SimpleNamespace(name="notices"))
    resources, waiters, referrers = (SimpleNamespace(name=n) for n in ("resources", "waiters", "referrers"))
    index = DependencyIndex(cast(Any, eos), cast(Any, topics), cast(Any, resources), cast(Any, waiters),
                            cast(Any, referrers), PARTITIONS, released=lambda: releases.append(None))
    target = _key_on(0, "customer")
    tables.data[("waiters", target)] = [
        {"type": "pin", "waiter": _key_on(p, f"order{n}").decode(), "eventId": f"b:{n}", "target": target.decode(),
         "mode": "wait"} for n, p in enumerate(waiter_partitions)]
    event = SimpleNamespace(message=SimpleNamespace(partition=0))
    asyncio.run(index.on_created(cast(Any, event), target))
    assert ("waiters", target) not in tables.data, "the waiters were not forgotten once answered"
    return len(releases), list(index.answered), outputs


def test_a_creation_answering_in_place_asks_no_commit_of_its_own() -> None:
    commits, answered, outputs = _created_with_waiters([0, 0])
    assert len(answered) == 2 and not outputs.sent, f"expected two answers in place: {answered}, sent {outputs.sent}"
    assert commits == 0, f"a creation whose answers were all made in place asked for {commits} commit(s)"


def test_a_creation_answering_through_the_topic_asks_for_one_commit() -> None:
    commits, answered, outputs = _created_with_waiters([0, 3, 5])
    assert len(answered) == 1, f"expected the waiter of partition 0 answered in place, got {answered}"
    assert [topic for topic, _, _ in outputs.sent] == ["notices", "notices"], f"sent {outputs.sent}"
    assert commits == 1, f"a creation answering two waiters through the topic asked for {commits} commits"
