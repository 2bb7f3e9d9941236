"""A second worker (`make bench`): end to end with two workers, and what its joining costs."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from typing import Any

from bench.stack import (
    Stack,
    batch_body,
    post_batches,
    wait_all_terminal,
)
from harness.processes import ServiceProcess, free_port, wait_until


async def measure_two_workers(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """8. Scale-out: a second worker joins the group; the end-to-end run again."""
    settings = replace(stack.settings, worker_web_port=free_port())
    second = ServiceProcess(["-m", "processors.worker"], settings, stack.workdir / "worker-2.log").start()
    joined = time.monotonic()
    try:
        # Its partitions are its own once it logs where each of its ingest partitions resumes:
        # after it restored its share as standbys (it has none on disk) and asked for it, in the
        # rebalance where it takes it warm. Its first rebalance gives it standbys only.
        try:
            await asyncio.to_thread(wait_until, lambda: any("resuming at" in line and ".ingest[" in line
                                                        for line in second.log().splitlines()), 900,
                                    what="the second worker to take partitions")
        except AssertionError:
            print(f"--- worker 2:\n{second.log()[-4000:]}\n--- worker 1:\n{stack.worker.log()[-4000:]}", flush=True)
            raise
        takeover_s = time.monotonic() - joined
        print(f"a second worker took its partitions in {takeover_s:.0f} s (restore as standbys, then takeover)",
              flush=True)
        await wait_all_terminal(stack, (await post_batches(stack, [batch_body("two-warmup")], 1))[1])
        bodies = [batch_body(f"e2e2-{b}") for b in range(args.e2e_batches)]
        started, cpu = time.monotonic(), stack.cpu_share(**{"worker 2": [second.proc.pid]})
        _, ids, _ = await post_batches(stack, bodies, 4)
        finished = await wait_all_terminal(stack, ids)
        rate = len(bodies) * 1000 / (finished - started)
        results["end_to_end_2_workers"] = {"records_per_s": rate, "per_worker": rate / 2, "cores": cpu.cores(),
                                           "takeover_s": takeover_s}
        print(f"end to end, 2 workers: {rate:,.0f} rec/s ({rate / 2:,.0f} per worker)", flush=True)
    finally:
        second.stop()
