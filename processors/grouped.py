"""Requests and answers between partitions, many to a message: pins, notices, unrefs, cascades.

A batch of 1000 orders naming customers makes 1000 pin requests on the customers' partitions
and 1000 answers back. Sent one message each, every one was an event of its own on the
receiving side (Faust's per-event path, the exactly-once bookkeeping, its own offset): records
with a reference applied at a tenth of the rate of records without. Instead, the items that
one transaction sends to one partition of the dependency-requests or dependency-notices topic,
one after another, travel as one message — `{"type": "group", "items": [[key, item], ...]}` —
and are handled in that order as one event. Order is exactly as if each had been its own
message: an item joins a group only while that group is the last output of its transaction for
that topic partition (`processors.outputs.Outputs.send_item`), and every item of a
group is keyed by a resource on that partition.

A message that is one item (a direct producer's, or one written before groups) stays valid:
its key is the item's key.
"""

from __future__ import annotations

from typing import Any

import orjson

GROUP = "group"
# A group holds at most this many bytes of items (a message stays well below the broker's
# default limit of 1 MiB, and a record batch below the producer's 512 KiB).
MAX_GROUP_BYTES = 256 * 1024


class Group:
    """Items bound for one partition of one topic, in order, encoded as one message when sent."""

    __slots__ = ("key", "items", "size")

    def __init__(self, key: bytes, item: bytes) -> None:
        self.key = key  # the first item's: the message's key, as a consumer of the topic sees it
        self.items = [item]
        self.size = len(item)

    def fits(self, item: bytes) -> bool:
        return self.size + len(item) <= MAX_GROUP_BYTES

    def add(self, item: bytes) -> None:
        self.items.append(item)
        self.size += len(item)

    def value(self) -> bytes:
        return b'{"type":"group","items":[' + b",".join(self.items) + b"]}"


def encode_item(key: bytes, item: dict[str, Any]) -> bytes:
    """One item of a group: the resource it is about (the key it would have had alone), and itself."""
    return orjson.dumps([key.decode(), item])


def items_of(key: bytes | None, message: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
    """The (resource key, item) pairs of a decoded message keyed `key`: a group's items, in
    order, or the message itself."""
    if message.get("type") != GROUP:
        return [(key or b"", message)]
    return [(item_key.encode(), item) for item_key, item in message["items"]]
