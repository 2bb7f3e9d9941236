"""Who waits for which resource, and who references it: kept on the referenced resource's partition.

A record of R that references T pins R on T's partition: in place, in the worker's one
transaction, when this worker processes that partition (`processors.in_place` says when it
may), else by a request about T on the dependency-requests topic (on T's partition, grouped
with the other requests sent there: `processors.grouped`). That topic is co-partitioned with
the ingest topic, so the request reaches the agent that also applies T's own writes, in one
serial order with them:
- T exists → R is recorded among T's referrers (`referrers`, key T + NUL + R) and a
  "resolved" notice goes back; R applies only once every reference it names is resolved;
- T is absent and R may wait → the request joins `waiters[T]` and a "waiting" notice goes back
  (R reports itself pending: only T's partition knows that T is missing); T's creation records
  R as a referrer and answers it;
- T is absent and R may not wait → a "missing" notice goes back (R fails).
An answer to R on a partition this worker processes and may write in place
(`processors.in_place`) is not sent: the resource processor hands it to R after the record that
made it (`answered`), in the same transaction — a record waiting for T is applied with T's
creation, not a commit and a fetch later.
An "unref" from R (it no longer references T, or never came to) removes R from T's referrers
(in place where R's pins are made in place: `unpin`).
A delete of T is therefore decided in the same order as every reference to it: it sees every
resource that references T, or is about to (the invariant of docs/api.md 6a: without cascade,
nothing ever points at a deleted resource). Answers are notices on R's partition of the
dependency-notices topic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TableT

from processors.transactions import ExactlyOnce
from topics.definitions import ServiceTopics
from topics.partitioning import partition_for

PIN, UNREF = "pin", "unref"
# A cascade delete asks each referrer to delete itself (CASCADE) and waits for their answers
# (CASCADED); both travel on the dependency-requests topic, so that a referrer's "unref", sent
# in the same transaction just before its answer, is read first.
CASCADE, CASCADED = "cascade", "cascaded"


def _referrer_key(target: bytes, referrer: bytes) -> bytes:
    return target + b"\x00" + referrer  # resource keys never hold a NUL


class DependencyIndex:
    def __init__(self, eos: ExactlyOnce, topics: ServiceTopics, resources: TableT, waiters: TableT,
                 referrers: TableT, partitions: int, released: Callable[[], None]) -> None:
        self.eos, self.topics, self.resources = eos, topics, resources
        self.waiters, self.referrers = waiters, referrers
        self.partitions = partitions  # of the ingest topic
        self.released = released  # called when a creation answers a waiting record through the topic (commit soon)
        # Answers made in place, in the order they were made: (R, R's partition, the notice).
        self.answered: deque[tuple[bytes, int, dict[str, Any]]] = deque()

    async def on_request(self, event: faust.EventT, target: bytes, request: dict[str, Any]) -> None:
        """A request about T (`target`, on the event's partition): pin R as a referrer of T, or
        forget R's pin."""
        if request.get("type", PIN) == UNREF:
            await self.unpin(event, target, request["referrer"].encode())
            return
        await self._notify(event, request, await self.pin(event, target, request))

    async def unpin(self, event: faust.EventT, target: bytes, referrer: bytes) -> None:
        """Forget that R (`referrer`) references or pinned T (`target`, on the event's partition).

        Called in place where R's pins are made in place (`processors.in_place`): an unref sent
        through the topic could be read after a newer pin of the same pair and take it away (a
        reference dropped and given back at once left it unpinned, and T could then be deleted
        under it). Elsewhere both travel through the topic, in the order R sent them."""
        key = _referrer_key(target, referrer)
        if self.eos.tables.has(event, self.referrers, key):
            await self.eos.tables.delete(event, self.referrers, key)

    async def pin(self, event: faust.EventT, target: bytes, request: dict[str, Any]) -> str:
        """Pin R (the request's waiter) on T (`target`, on the event's partition), in that
        partition's order: "resolved" (T exists, R is among its referrers), "waiting" (R waits
        for T's creation) or "missing" (T is absent and R may not wait)."""
        if self.eos.tables.has(event, self.resources, target):
            await self._pin(event, target, request)
            return "resolved"
        if request.get("mode") == "now":
            return "missing"
        waiters = self.eos.tables.get(event, self.waiters, target) or []
        await self.eos.tables.put(event, self.waiters, target, [*waiters, request])
        return "waiting"

    async def on_created(self, event: faust.EventT, target: bytes) -> None:
        """T was just created by `event`: pin and answer everyone waiting for it.

        A commit is asked for (`released`) only when an answer leaves through the topic: one made
        in place releases its record in this transaction, and that release asks for itself (it
        counted twice toward the pacer's `RELEASE_RATE`, which then stopped early commits at
        half the rate it names)."""
        waiters = self.eos.tables.get(event, self.waiters, target)
        if not waiters:
            return
        await self.eos.tables.delete(event, self.waiters, target)
        sent = False
        for request in waiters:
            await self._pin(event, target, request)
            sent |= not await self._notify(event, request, "resolved")
        if sent:
            self.released()

    def referrers_of(self, event: faust.EventT, target: bytes, limit: int = 1000) -> list[bytes]:
        """Up to `limit` resources other than T that reference T or are about to (pinned)."""
        found = self.eos.tables.keys_with_prefix(event, self.referrers, target + b"\x00", _referrer_key(target, target),
                                                 limit)
        return [key[len(target) + 1:] for key in found]

    async def _pin(self, event: faust.EventT, target: bytes, request: dict[str, Any]) -> None:
        key = _referrer_key(target, request["waiter"].encode())
        # A waiter that did not exist when it asked has no pin here to find (a stale one, of an
        # earlier life, is only written again): the look, a RocksDB read, is spared.
        if request.get("new") or not self.eos.tables.has(event, self.referrers, key):
            await self.eos.tables.put(event, self.referrers, key, 1)

    async def _notify(self, event: faust.EventT, request: dict[str, Any], kind: str) -> bool:
        """Answer R: in place where this worker may write R's partition (`answered`; True), else by a
        notice on R's partition (False). R's handling of answers does not depend on their order (an
        answer about a target R no longer waits for is dropped), so one made in place may
        overtake one still on the topic."""
        notice = {"type": kind, "eventId": request["eventId"], "target": request["target"]}
        waiter = request["waiter"].encode()
        partition = partition_for(waiter, self.partitions)
        if self.eos.in_place.allows(event.message.partition, partition):
            self.answered.append((waiter, partition, notice))
            return True
        await self.eos.outputs.send_item(event, self.topics.dependency_notices.name, waiter, notice)
        return False


# Requests and answers are sent with `Outputs.send_item` (`processors.outputs`), keyed by the
# resource they are about: grouped per partition (`processors.grouped`).

def pin_request(waiter: bytes, event_id: str, target: bytes, may_wait: bool, new: bool = False) -> dict[str, Any]:
    """R (`waiter`) asks T's partition to pin it as a referrer: wait for T, or answer at once.
    `new`: R does not exist yet."""
    request: dict[str, Any] = {"type": PIN, "waiter": waiter.decode(), "eventId": event_id, "target": target.decode(),
                               "mode": "wait" if may_wait else "now"}
    if new:
        request["new"] = True
    return request


def unref_request(referrer: bytes) -> dict[str, Any]:
    return {"type": UNREF, "referrer": referrer.decode()}


def cascade_request(asker: bytes, event_id: str, target: bytes, batch_id: str) -> dict[str, Any]:
    """A cascade delete of `asker` asks `target`, which references it, to delete itself first."""
    return {"type": CASCADE, "asker": asker.decode(), "eventId": event_id, "target": target.decode(),
            "batchId": batch_id}


def cascade_answer(request: dict[str, Any], deleted: dict[str, int], outcome: str) -> dict[str, Any]:
    """What a cascade request came to: `outcome` "deleted" (or already absent, or no longer
    referencing the asker when the request's turn came), "deleting" (its own cascade is under
    way: a cycle) or "kept"; `deleted` counts the resources it deleted by schema definition id,
    itself included."""
    return {"type": CASCADED, "eventId": request["eventId"], "target": request["target"], "deleted": deleted,
            "outcome": outcome}
