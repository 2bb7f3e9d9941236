"""When a worker commits for a released record (`processors.commit_pacing`): soon after an
occasional release, and not for each of a burst of them (the commit interval paces those)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust

from processors.commit_pacing import RELEASE_RATE, CommitPacer


class _Consumer:
    def __init__(self) -> None:
        self.commits = 0
        self.committed = asyncio.Event()

    async def commit(self) -> bool:
        self.commits += 1
        self.committed.set()
        return True


class _App:
    def __init__(self) -> None:
        self.consumer = _Consumer()


def _pacer() -> tuple[CommitPacer, _Consumer]:
    app = _App()
    return CommitPacer(cast(faust.App, cast(Any, app))), app.consumer


def test_an_occasional_release_is_committed_at_once() -> None:
    asyncio.run(_occasional())


async def _occasional() -> None:
    pacer, consumer = _pacer()
    task = asyncio.create_task(pacer.commit_when_released())
    try:
        pacer.released()
        await asyncio.wait_for(consumer.committed.wait(), 5)
        assert consumer.commits == 1, f"one release made {consumer.commits} commits"
    finally:
        task.cancel()


def test_a_burst_of_releases_leaves_its_commits_to_the_interval() -> None:
    asyncio.run(_burst())


async def _burst() -> None:
    pacer, consumer = _pacer()
    for _ in range(int(RELEASE_RATE) * 2):
        pacer.released()
    consumer.committed.clear()
    task = asyncio.create_task(pacer.commit_when_released())
    try:
        # The first releases of the burst ask for one commit; the rest, past the rate, none.
        await asyncio.wait_for(consumer.committed.wait(), 5)
        consumer.committed.clear()
        pacer.released()  # still past the rate
        await asyncio.sleep(0)
        assert not pacer._released.is_set(), "a release past RELEASE_RATE asked for a commit"
        assert consumer.commits == 1, f"a burst of {int(RELEASE_RATE) * 2} releases made {consumer.commits} commits"
    finally:
        task.cancel()
