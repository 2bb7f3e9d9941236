"""When a worker commits: at Faust's commit interval, and at once when a quiet worker's stream
runs dry (`CommitPacer.commit_when_idle`), so that a single write's result is visible a few
milliseconds after it is processed rather than at the next interval."""

from __future__ import annotations

import asyncio
import math
import time

import faust

IDLE_S = 0.002  # how long the stream stays dry before an idle commit
RATE_S = 1.0  # over how long the rate of events is measured
IDLE_RATE = 100.0  # events per second up to which a worker commits whenever its stream runs dry


class CommitPacer:
    """Follows the agent's events (`event_began`, `event_ended`) and commits when it is idle."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._idle = asyncio.Event()  # set when the stream has nothing more to process for now
        # Events processed, decaying by e per RATE_S: over RATE_S, the rate of events.
        self._events, self._events_at = 0.0, 0.0

    def event_began(self) -> None:
        """The agent took an event (for `commit_when_idle`)."""
        self._idle.clear()

    def event_ended(self, dry: bool) -> None:
        """The agent is done with its event; `dry`: nothing else is waiting in its stream."""
        now = time.monotonic()
        self._events = self._events * math.exp((self._events_at - now) / RATE_S) + 1
        self._events_at = now
        if dry:
            self._idle.set()

    def event_rate(self) -> float:
        """Events processed per second, lately (an average decaying over `RATE_S`)."""
        return self._events * math.exp((self._events_at - time.monotonic()) / RATE_S) / RATE_S

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
            if self.event_rate() > IDLE_RATE:
                continue
            # A commit already under way (the interval's) makes this call wait for it and
            # return without committing what came after its offsets: ask once more.
            if not await self.app.consumer.commit():
                await self.app.consumer.commit()
