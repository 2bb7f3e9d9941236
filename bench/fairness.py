"""Fairness between tenants (`make bench`): one tenant's single 1000-record batches, idle and
while another uploads continuously at its full quota (`ingest.quotas`)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from typing import Any

import httpx

from bench.stack import (
    SCHEMA,
    Stack,
    batch_body,
    percentile,
    post_batches,
    wait_all_terminal,
)
from reach.config import Quota
from reach.token import make_token


async def single_batch_latencies(stack: Stack, runs: int, tag: str) -> list[float]:
    out = []
    for run in range(runs):
        body = batch_body(f"{tag}{run}")
        started = time.monotonic()
        _, ids, _ = await post_batches(stack, [body], 1)
        finished = await wait_all_terminal(stack, ids)
        out.append(finished - started)
    return out


async def measure_fairness(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """9. Two tenants: one uploads continuously at its full quota (a share of the measured
    end-to-end rate), the other's single 1000-record batches are timed, against the same idle
    just before; once per share."""
    async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
        response = await http.post("/partner/schema-definitions", json=SCHEMA,
                                   headers={"Authorization": f"Bearer {make_token(stack.settings, 'bulk')}"})
        response.raise_for_status()
    results["fairness"] = []
    for share in args.bulk_share:
        for burst in (None, 1000):  # a minute's worth at once (the default), and paced: one batch
            results["fairness"].append(await fairness_at(
                stack, args, int(results["end_to_end"]["records_per_s"] * 60 * share), share, burst))


async def fairness_at(stack: Stack, args: argparse.Namespace, per_minute: int, share: float,
                      burst: int | None) -> dict[str, Any]:
    """One tenant at its quota (`burst`: its REACH_QUOTA_BURST_RECORDS, None: a minute's worth),
    another one's single batches timed beside it from 5 s after it began, and idle just before."""
    stack.restart_ingress(replace(stack.settings, quota_overrides={
        "bulk": Quota(records_per_minute=per_minute, burst_records=burst)}))
    # A tenant of its own per run: what one run spent of its allowance must not refuse the next.
    bulk = {"Authorization": f"Bearer {make_token(stack.settings, 'bulk', f'bulk-{share}-{burst}')}",
            "content-type": "application/json"}
    idle = await single_batch_latencies(stack, args.fairness_runs, f"fair-idle{share}-{burst}")
    stop, taken, refused, started = asyncio.Event(), [0], [0], time.monotonic()

    async def bulk_client(n: int) -> None:
        """As `reach upload` does: send, and wait as long as a 429's Retry-After says."""
        async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
            b = 0
            while not stop.is_set():
                response = await http.post("/api/resources/customer/batch",
                                           content=batch_body(f"bulk{share}-{burst}-{n}-{b}"), headers=bulk)
                b += 1
                if response.status_code == 202:
                    taken[0] += 1000
                elif response.status_code == 429:
                    refused[0] += 1
                    await asyncio.sleep(float(response.headers["retry-after"]))
                else:
                    raise RuntimeError(f"bulk upload answered {response.status_code}: {response.text[:300]}")

    clients = [asyncio.create_task(bulk_client(n)) for n in range(2)]
    # Paced, the tenant is at its quota's pace by then; with a minute's worth at once, it is
    # still sending that burst, and the timed batches queue behind what it has sent.
    await asyncio.sleep(5)
    loaded = await single_batch_latencies(stack, args.fairness_runs, f"fair-loaded{share}-{burst}")
    stop.set()
    await asyncio.gather(*clients)
    bulk_rate = taken[0] / (time.monotonic() - started)
    print(f"fairness: a tenant at its quota of {per_minute:,} records/min ({share:.0%} of end to end; burst "
          f"{'a minute' if burst is None else burst}) sends "
          f"{bulk_rate:,.0f} rec/s ({refused[0]} 429s); another tenant's batch p50/p99 idle "
          f"{percentile(idle, 50) * 1000:.0f}/{percentile(idle, 99) * 1000:.0f} ms, alongside "
          f"{percentile(loaded, 50) * 1000:.0f}/{percentile(loaded, 99) * 1000:.0f} ms "
          f"(p99 x{percentile(loaded, 99) / percentile(idle, 99):.2f})", flush=True)
    await wait_drained(stack)
    return {"share": share, "bulk_quota_per_minute": per_minute, "burst_records": burst or per_minute,
            "bulk_records_per_s": bulk_rate,
            "bulk_429s": refused[0],
            "idle": {"p50": percentile(idle, 50), "p99": percentile(idle, 99), "runs": idle},
            "alongside_bulk": {"p50": percentile(loaded, 50), "p99": percentile(loaded, 99), "runs": loaded}}


async def wait_drained(stack: Stack, timeout_s: float = 600) -> None:
    """Until no accepted record waits for the worker (the ingress's `/ready` says)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        while (await http.get("/ready")).json()["data"]["backlogRecords"] > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the backlog did not drain in {timeout_s} s")
            await asyncio.sleep(0.1)
