"""Where a record's pins and unpins are made: in place, or as requests on the requests topic.

A record of R (partition p) that references T (partition q) pins R on T's partition
(`processors.dependencies`), so that a delete of T sees R. When this worker processes q too,
the pin is written in place — into q's tables, in the worker's one transaction
(`processors.transactions`), which commits it together with R's record: no request, no answer,
no wait. Otherwise it is a request on q's partition of the dependency-requests topic, made by q's
owner in that partition's order, and answered.

Pins and unpins of one pair must reach T's partition in the order R made them: a pin taken
away by an older unpin left T deletable under R. One made in place is applied at once, one sent
as a request only when q's owner reaches it; so one is made in place on q only when no request
about the same pair can still be unprocessed there (`InPlace.allows`):
- q is a partition this worker processes, and it has processed q's requests partition up to its
  barrier: what was committed there when the worker last took partitions over (a previous
  owner's requests, about pairs whose referrer's partition this worker may now have);
- and up to the last pin or unpin it sent there itself; none is made in place on q while one
  sent there is in the open or committing transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from faust.types import TP

from reach import seam


class _Message(NamedTuple):
    tp: TP
    topic: str
    partition: int
    offset: int
    headers: Any


class _Event(NamedTuple):
    message: _Message


def event_at(event: Any, partition: int) -> Any:
    """`event` as the tables and outputs see it, but on `partition`: what it does in place there
    (reads and writes of that partition's tables, in the same transaction)."""
    message = event.message
    if message.partition == partition:
        return event
    return _Event(_Message(TP(message.tp.topic, partition), message.topic, partition, message.offset, None))


class InPlace:
    """Which partitions this worker makes pins and unpins on in place (the module docstring)."""

    def __init__(self, requests: str, expected: Mapping[TP, int]) -> None:
        self.requests = requests  # the dependency-requests topic
        self._expected = expected  # the next offset to process of each input partition (`ExactlyOnce.expected`)
        self._barrier: dict[int, int] = {}  # q -> processed up to here, a request of q's partition may be in place
        self._sent: dict[int, int] = {}  # q -> the offset after the last pin or unpin this worker sent to q
        self.sending: set[int] = set()  # q's with a pin or unpin sent in the open transaction
        self.committing: set[int] = set()  # ... in the committing one

    def allows(self, here: int, there: int) -> bool:
        """Whether an event of partition `here` may pin or unpin on partition `there` in place."""
        if there == here:
            return True  # the event is in that partition's order itself
        barrier = self._barrier.get(there)
        if barrier is None or there in self.sending or there in self.committing:
            return False
        end = max(barrier, self._sent.get(there, 0))
        expected = self._expected.get(TP(self.requests, there))
        return expected is not None and (expected >= end or seam.passed_over(self.requests, there, expected, end))

    def took_over(self, ends: Mapping[int, int]) -> None:
        """The worker took partitions over; `ends` is, for every partition it now processes, the
        end of what is committed on its requests partition."""
        self._barrier = dict(ends)

    def forget(self, partitions: Iterable[int]) -> None:
        """A rebalance began: nothing on `partitions` in place until the next `took_over`."""
        for partition in partitions:
            self._barrier.pop(partition, None)
            self._sent.pop(partition, None)

    def sent(self, ends: Mapping[int, int]) -> None:
        """The committing transaction's pins and unpins are delivered: `ends` is, per partition,
        the offset after the last one."""
        for partition, end in ends.items():
            self._sent[partition] = max(self._sent.get(partition, 0), end)
