"""Turns of the worker's event loop while its agent works through a large event.

An ingest message carries a partition's share of a 1000-record batch, a group of requests or
answers as many items (`processors.grouped`): worked through without a pause, one event held
the event loop for 8 ms and more. Everything else the loop runs waited that long for each of
its steps — the round trips of a commit (the produce of its outputs, AddOffsetsToTxn,
TxnOffsetCommit, EndTxn: each one step to send and one to read the answer), the fetcher
handing over the next records — so that under load a commit of the four partitions'
transactions took 160 ms, and a waiting record's release, which crosses two commits, waited
for them. The agent gives the loop a turn at least every `TURN_S` of its work instead.

A turn is no new interleaving: an event's awaits could always suspend (a flush of its outputs
does). Commits still take their offsets only between events (the lock of
`processors.transactions`); a rebalance that begins during a turn lets Faust drop its handles
on the stores of revoked partitions (a read after that opens the store again) and waits for the
event in hand before it commits, and what the event sent for a partition that moved dies with
that partition's producer (`processors.transactions`, points 5 and 8).
"""

from __future__ import annotations

import asyncio
from time import monotonic

TURN_S = 0.0005  # the longest the agent works without giving the loop a turn


class Turns:
    """Hands the event loop a turn once `every_s` of work has passed since the last one."""

    def __init__(self, every_s: float = TURN_S) -> None:
        self.every_s = every_s
        self._due = monotonic() + every_s

    async def take(self) -> None:
        """Give the loop a turn if one is due (call between two records of an event)."""
        if monotonic() >= self._due:
            await asyncio.sleep(0)
            self._due = monotonic() + self.every_s
