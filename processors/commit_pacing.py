"""When a worker commits: at Faust's commit interval; at once when a quiet worker's stream runs
dry (`CommitPacer.commit_when_idle`), so that a single write's result is visible a few
milliseconds after it is processed rather than at the next interval; and soon after a record
that waited for a missing reference is released (`CommitPacer.commit_when_released`), busy or
not."""

from __future__ import annotations

import asyncio
import math
import time

import faust

IDLE_S = 0.002  # how long the stream stays dry before an idle commit
RATE_S = 1.0  # over how long rates are measured
IDLE_RATE = 100.0  # events per second up to which a worker commits whenever its stream runs dry
RELEASE_RATE = 50.0  # releases per second up to which a worker commits soon after each
RELEASE_GAP_S = 0.025  # at least this between the starts of two commits asked for by releases


class Rate:
    """How often something happened lately: a count decaying by e per `RATE_S`."""

    def __init__(self) -> None:
        self._count, self._at = 0.0, 0.0

    def add(self) -> None:
        now = time.monotonic()
        self._count = self._count * math.exp((self._at - now) / RATE_S) + 1
        self._at = now

    def per_second(self) -> float:
        return self._count * math.exp((self._at - time.monotonic()) / RATE_S) / RATE_S


class CommitPacer:
    """Follows the agent's events (`event_began`, `event_ended`) and commits when it is idle."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._idle = asyncio.Event()  # set when the stream has nothing more to process for now
        self._events = Rate()  # events processed
        self._released = asyncio.Event()  # set when the open transaction releases a waiting record
        self._releases = Rate()
        self._released_commit_at = -math.inf

    def event_began(self) -> None:
        """The agent took an event (for `commit_when_idle`)."""
        self._idle.clear()

    def event_ended(self, dry: bool) -> None:
        """The agent is done with its event; `dry`: nothing else is waiting in its stream."""
        self._events.add()
        if dry:
            self._idle.set()

    async def commit_when_idle(self) -> None:
        """Commit whenever the stream of a worker with few events runs dry (an app task).

        Results become visible at the commit, so a worker that is not busy commits at once,
        not at the next commit interval: a batch's latency no longer includes that wait,
        nor a dependency's release, which crosses two transactions, two. But each commit
        costs round trips per partition, and a stream of many small events (dependency
        requests and answers, one-record messages) runs dry between fetches and while it
        waits for answers: committing at each of those made 4-10 times as many commits and
        halved the speed of references and cascades. Past `IDLE_RATE` events per second the
        interval alone paces the commits, as before; uploads travel as a few large messages
        per batch and stay below it.
        """
        while True:
            await self._idle.wait()
            # Faust hands fetched records to the stream one at a time: give it the chance to
            # hand over the rest of a fetch before deciding that the stream is dry.
            await asyncio.sleep(IDLE_S)
            if not self._idle.is_set():
                continue  # an event began meanwhile; its end asks again
            self._idle.clear()
            if self._events.per_second() > IDLE_RATE:
                continue
            await self._commit()

    def released(self) -> None:
        """The open transaction releases a record that waited for a missing reference: its
        target's creation answers it, or the record itself is applied (`commit_when_released`)."""
        self._releases.add()
        if self._releases.per_second() <= RELEASE_RATE:
            self._released.set()

    async def commit_when_released(self) -> None:
        """Commit soon after a release, however busy the worker is (an app task).

        A release made in place (`processors.dependencies`: the worker processes the waiting
        record's partition) is one transaction, visible at its commit; otherwise it crosses
        two (the target's creation sends the answer, the waiting record's partition applies
        it). Without this, each waited under load for the commit interval (the stream never
        runs dry): a waiting order created after its customer beside a bulk load of orders
        naming existing customers took 97 ms (p50; 192 at most over 40 runs) and its batch was
        terminal 130 ms after that.

        Each such commit ends the transactions of every partition a little early, which costs
        a bulk load of waiting records released together: released at once, 10,000 orders
        whose customers came after them went from 7,100 to 4,400-5,100 per second with a commit
        every `RELEASE_GAP_S`. So only a worker that releases at most `RELEASE_RATE` records per
        second commits for them; past that, the interval paces its commits as before.
        """
        while True:
            await self._released.wait()
            await asyncio.sleep(max(IDLE_S, self._released_commit_at + RELEASE_GAP_S - time.monotonic()))
            self._released.clear()  # what is released from now on is in this commit or asks again
            self._released_commit_at = time.monotonic()
            await self._commit()

    async def _commit(self) -> None:
        """Commit everything processed so far. A commit already under way (the interval's)
        makes a call wait for it and return without committing what came after its offsets:
        ask once more."""
        if not await self.app.consumer.commit():
            await self.app.consumer.commit()
