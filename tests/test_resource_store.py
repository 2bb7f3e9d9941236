"""The resources read model on disk (`state.resource_store`, what a reader keeps): pages by seek at
any depth, counts kept per scope, deletes, a store that reopens with its positions (a restarted
reader: tests/test_readers.py), and a store that no longer matches its share."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition

from schemas.events import resource_key
from state.resource_store import ResourceStore
from state.store import StoreInUse

TOPIC = "resources"


def _resource(external_id: str, n: int = 0, tenant: str = "t1", schema: str = "s1") -> dict[str, Any]:
    return {"platformId": "p", "businessId": tenant, "schemaDefinitionId": schema,
            "resourceExternalId": external_id, "n": n}


def _message(offset: int, resource: dict[str, Any] | None, key: bytes | None = None) -> Any:
    if resource is not None:
        key = resource_key(resource["platformId"], resource["businessId"], resource["schemaDefinitionId"],
                           resource["resourceExternalId"])
    return SimpleNamespace(offset=offset, key=key, value=None if resource is None else orjson.dumps(resource))


def _fold(store: ResourceStore, messages: list[Any], position: int) -> None:
    store.apply_all({TopicPartition(TOPIC, 0): messages}, {TopicPartition(TOPIC, 0): position})


def _all_pages(store: ResourceStore, limit: int, **scope: str) -> tuple[list[str], list[int]]:
    ids, totals, after = [], [], None
    while True:
        page, total, has_next = store.page(scope.get("partner", "p"), scope.get("tenant", "t1"),
                                           scope.get("schema", "s1"), after, limit)
        ids += [r["resourceExternalId"] for r in page]
        totals.append(total)
        if not has_next:
            return ids, totals
        after = page[-1]["resourceExternalId"]


def test_pages_follow_external_id_order_and_counts_stay_exact(tmp_path: Path) -> None:
    store = ResourceStore("unused:9092", TOPIC, tmp_path / "store")
    ids = [f"id-{i:04d}" for i in range(250)] + ["Zed", "a/b", "ä-umlaut", "日本", "a", "a b"]
    _fold(store, [_message(i, _resource(x)) for i, x in enumerate(ids)], len(ids))
    _fold(store, [_message(300, _resource("other", tenant="t2")), _message(301, _resource("x", schema="s2"))], 302)
    _fold(store, [_message(302, _resource("id-0007", n=7)), _message(303, _resource("id-0007", n=8))], 304)

    pages, totals = _all_pages(store, 100)
    assert pages == sorted(ids), "the pages do not list every resource once, in external id order"
    assert set(totals) == {len(ids)}, "an update changed the count"
    assert cast(dict[str, Any], store.get("p", "t1", "s1", "id-0007"))["n"] == 8
    assert _all_pages(store, 10, tenant="t2") == (["other"], [1])

    _fold(store, [_message(304, None, key=resource_key("p", "t1", "s1", "a/b")),
                  _message(305, None, key=resource_key("p", "t1", "s1", "never-stored"))], 306)
    pages, totals = _all_pages(store, 1000)
    assert "a/b" not in pages and totals == [len(ids) - 1], "a deleted resource is still listed or counted"
    assert store.get("p", "t1", "s1", "a/b") is None
    store.store.close()


def test_the_store_reopens_with_its_state_and_the_positions_it_reflects(tmp_path: Path) -> None:
    store = ResourceStore("unused:9092", TOPIC, tmp_path / "store")
    _fold(store, [_message(0, _resource("a"))], 2)
    store.store.close()
    again = ResourceStore("unused:9092", TOPIC, tmp_path / "store")
    assert again.initial_positions() == {0: 2}
    assert again.get("p", "t1", "s1", "a") is not None
    with pytest.raises(StoreInUse, match="open in another process"):
        ResourceStore("unused:9092", TOPIC, tmp_path / "store")
    again.store.close()


def test_the_reverse_index_follows_every_change_of_who_references_whom(tmp_path: Path) -> None:
    def key(external_id: str, schema: str = "s1") -> bytes:
        return resource_key("p", "t1", schema, external_id)

    legacy: list[str] = []  # what the fallback was asked about (resources stored without `references`)

    def from_definition(partner_id: str, definition_id: str, raw: bytes) -> list[str]:
        resource = orjson.loads(raw)
        assert (partner_id, definition_id) == (resource["platformId"], resource["schemaDefinitionId"])
        legacy.append(resource["resourceExternalId"])
        return [key(resource["parent"]).decode()] if "parent" in resource else []

    store = ResourceStore("unused:9092", TOPIC, tmp_path / "store", references_of=from_definition)
    a, b, c = (_resource(x) for x in ("a", "b", "c"))
    _fold(store, [_message(0, a), _message(1, b), _message(2, c),
                  _message(3, {**_resource("o1", schema="s2"), "references": [key("a").decode(), key("b").decode()]}),
                  _message(4, {**_resource("o2", schema="s2"), "references": [key("a").decode()]}),
                  _message(5, {**_resource("a"), "references": [key("a").decode()]}),  # itself: never listed
                  _message(6, {**_resource("old", schema="s3"), "parent": "c"})], 7)
    assert store.referrers_of_many([key("a"), key("b"), key("c")]) == {
        key("a"): [key("o1", "s2"), key("o2", "s2")], key("b"): [key("o1", "s2")], key("c"): [key("old", "s3")]}
    assert "old" in legacy
    # o1 stops referencing b; o2 is deleted (a tombstone); a is deleted and comes back without references.
    _fold(store, [_message(7, {**_resource("o1", schema="s2"), "references": [key("a").decode()]}),
                  _message(8, None, key("o2", "s2")), _message(9, None, key("a")), _message(10, a)], 11)
    assert store.referrers_of_many([key("a"), key("b")]) == {key("a"): [key("o1", "s2")], key("b"): []}
    assert store.exist([key("a"), key("o2", "s2"), key("o1", "s2")]) == [True, False, True]
    assert store.count("p", "t1", "s2") == 1 and list(store.external_ids("p", "t1", "s1")) == ["a", "b", "c"]
    assert store.get("p", "t1", "s2", "o1")["references"] == [key("a").decode()]  # type: ignore[index]
    # A member named "references" inside the data is the user's, not the list of what it references.
    _fold(store, [_message(11, {**_resource("d", schema="s3"), "parent": "b", "data": {"references": ["c"]}})], 12)
    assert "d" in legacy and store.referrers_of_many([key("b")]) == {key("b"): [key("d", "s3")]}


def test_a_message_without_a_key_is_placed_by_its_value(tmp_path: Path) -> None:
    store = ResourceStore("unused:9092", TOPIC, tmp_path / "store")
    keyless = SimpleNamespace(offset=0, key=None, value=orjson.dumps(_resource("a b/ä", schema="s2")))
    _fold(store, [keyless, _message(1, _resource("a b/ä", schema="s2", n=2))], 2)
    assert _all_pages(store, 10, schema="s2") == (["a b/ä"], [1]), "the two messages of one resource count twice"
    assert cast(dict[str, Any], store.get("p", "t1", "s2", "a b/ä"))["n"] == 2
    store.store.close()


def test_a_store_of_another_share_is_read_again_from_the_beginning(tmp_path: Path) -> None:
    from topics.partitioning import Share

    store = ResourceStore("unused:9092", TOPIC, tmp_path / "store")  # every partition
    store.apply_all({TopicPartition(TOPIC, 0): [_message(0, _resource("a"))],
                     TopicPartition(TOPIC, 1): [_message(0, _resource("b"))]},
                    {TopicPartition(TOPIC, 0): 1, TopicPartition(TOPIC, 1): 1})
    store.store.close()
    mine = ResourceStore("unused:9092", TOPIC, tmp_path / "store", share=Share(0, 2))
    assert mine.initial_positions() == {}, "a store holding partition 1 kept it for a reader of partitions 0, 2, …"
    assert mine.get("p", "t1", "s1", "a") is None and mine.count("p", "t1", "s1") == 0
    mine.store.close()
    again = ResourceStore("unused:9092", TOPIC, tmp_path / "store", share=Share(0, 2))
    _fold(again, [_message(0, _resource("a"))], 1)
    again.store.close()
    kept = ResourceStore("unused:9092", TOPIC, tmp_path / "store", share=Share(0, 2))
    assert kept.initial_positions() == {0: 1}, "a store of its own share was dropped"
    kept.store.close()
