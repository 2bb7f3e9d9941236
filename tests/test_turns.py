"""The worker's agent gives the event loop a turn while it works through a large event (`processors.turns`)."""

from __future__ import annotations

import asyncio

import pytest

from processors import turns as turns_module
from processors.turns import Turns


def test_the_loop_gets_a_turn_once_the_work_since_the_last_has_taken_every_s(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(turns_module, "monotonic", lambda: now[0])
    assert asyncio.run(_steps_run_by_each_take(now)) == [0, 0, 1, 0, 0, 1, 0], \
        "a turn at 100.6 (0.5 after the start), the next due 0.5 after that turn: at 101.1"


async def _steps_run_by_each_take(now: list[float]) -> list[int]:
    """How many steps another task made during each `take()`, the clock set before each."""
    steps = 0

    async def elsewhere() -> None:  # what else the loop runs: a commit's round trips, the fetcher
        nonlocal steps
        while True:
            steps += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(elsewhere())
    await asyncio.sleep(0)
    try:
        turns = Turns(every_s=0.5)
        seen = []
        for at in (100.1, 100.4, 100.6, 100.7, 101.0, 101.1, 101.2):
            now[0] = at
            before = steps
            await turns.take()
            seen.append(steps - before)
        return seen
    finally:
        task.cancel()
