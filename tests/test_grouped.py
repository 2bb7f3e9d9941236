"""Requests and answers grouped per partition (`processors.grouped`): what a message holds."""

from __future__ import annotations

import orjson

from processors.grouped import MAX_GROUP_BYTES, Group, encode_item, items_of


def test_a_group_holds_its_items_in_order_each_with_its_resource_key() -> None:
    items = [(b"p/t/d/a", {"type": "pin", "n": 1}), (b"p/t/d/b%2Fc", {"type": "unref", "n": 2}),
             (b"p/t/d/a", {"type": "pin", "n": 3})]
    group = Group(items[0][0], encode_item(*items[0]))
    for key, item in items[1:]:
        group.add(encode_item(key, item))
    assert group.key == b"p/t/d/a"
    assert items_of(group.key, orjson.loads(group.value())) == items


def test_a_message_of_one_request_is_one_item_keyed_by_the_message_key() -> None:
    request = {"type": "pin", "waiter": "p/t/o/1", "eventId": "e", "target": "p/t/c/1", "mode": "wait"}
    assert items_of(b"p/t/c/1", request) == [(b"p/t/c/1", request)]


def test_a_group_stops_taking_items_at_its_size_limit() -> None:
    item = encode_item(b"k", {"pad": "x" * 1000})
    group = Group(b"k", item)
    while group.fits(item):
        group.add(item)
    assert MAX_GROUP_BYTES - len(item) < group.size <= MAX_GROUP_BYTES
    assert len(group.value()) < 1024 * 1024  # below the broker's default message size
