"""How the service behaves as stored data grows: `python -m bench.scale --sizes 10000 200000`.

One stack (broker, one ingress, one worker; `bench.run.Stack`) is loaded over HTTP with
1000-record batches into one tenant's schema, up to each size in turn. At each size it
prints and records:

- each process's memory: peak (VmHWM) and current (VmRSS) of the ingress and the worker;
- a resource GET (p50, p99) and a list page of 100, first page and one 90% deep (p50);
- an ingress restarted on the same disk, after SIGTERM and after SIGKILL: seconds from its
  start until it answers a read of the newest resource;
- the worker restarted after SIGTERM and after SIGKILL: seconds from its start until a newly
  queued batch is terminal.

Writes `bench/results/scale.json`. Figures are measurements, not pass/fail checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run import RESULTS, Stack, batch_body, percentile, post_batches, wait_all_terminal
from ingest.pagination import encode_cursor
from tests.support import ServiceProcess

RUN = "scale"


def memory_mb(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            found[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"peak": found.get("VmHWM", float("nan")), "now": found.get("VmRSS", float("nan"))}


def resource_id(i: int) -> str:
    return f"{RUN}-{i:07d}"


async def load(stack: Stack, start: int, end: int, concurrency: int = 4) -> float:
    bodies = [batch_body(RUN, min(1000, end - i), i) for i in range(start, end, 1000)]
    started = time.monotonic()
    _, ids, _ = await post_batches(stack, bodies, concurrency)
    await wait_all_terminal(stack, ids, timeout_s=3600)
    return time.monotonic() - started


def timed_gets(stack: Stack, paths: list[tuple[str, dict[str, str]]]) -> list[float]:
    headers = {"Authorization": f"Bearer {stack.tenant}"}
    times = []
    with httpx.Client(base_url=stack.base, headers=headers, timeout=60) as http:
        for path, params in paths:
            started = time.perf_counter()
            response = http.get(path, params=params)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    return times


def restart_ingress(stack: Stack, sig: int, newest: str) -> float:
    """Seconds from a new ingress process's start until it answers a read of `newest`."""
    stack.ingress.stop(sig)
    stack.ingress = ServiceProcess(["-m", "ingest.server"], stack.settings, stack.workdir / "ingress.log").start()
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {stack.tenant}"}
    while True:
        try:
            if httpx.get(f"{stack.base}/api/resources/customer/{newest}", headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if time.monotonic() - started > 1800:
            raise TimeoutError("the restarted ingress did not answer within 30 min")
        time.sleep(0.05)


def restart_worker(stack: Stack, sig: int, probe: int) -> float:
    """Seconds from a new worker process's start until a batch queued for it is terminal."""
    stack.worker.stop(sig)
    batch_id = asyncio.run(post_batches(stack, [batch_body(f"probe{probe}", 1)], 1))[1][0]
    stack.worker = ServiceProcess(["-m", "processors.worker"], stack.settings, stack.workdir / "worker.log").start()
    started = time.monotonic()
    asyncio.run(wait_all_terminal(stack, [batch_id], timeout_s=1800))
    return time.monotonic() - started


def measure_at(stack: Stack, size: int, probe: int) -> dict[str, Any]:
    rng = random.Random(size)
    figures: dict[str, Any] = {"resources": size}
    figures["memory_mb"] = {"ingress": memory_mb(stack.ingress.proc.pid), "worker": memory_mb(stack.worker.proc.pid)}
    gets = timed_gets(stack, [(f"/api/resources/customer/{resource_id(rng.randrange(size))}", {}) for _ in range(200)])
    figures["get_ms"] = {"p50": round(statistics.median(gets) * 1000, 2), "p99": round(percentile(gets, 99) * 1000, 2)}
    first = timed_gets(stack, [("/api/resources/customer", {"limit": "100"})] * 20)
    deep_cursor = encode_cursor(resource_id(int(size * 0.9)))
    deep = timed_gets(stack, [("/api/resources/customer", {"limit": "100", "cursor": deep_cursor})] * 20)
    figures["page_ms"] = {"first_p50": round(statistics.median(first) * 1000, 2),
                          "deep_p50": round(statistics.median(deep) * 1000, 2)}
    newest = resource_id(size - 1)
    figures["ingress_restart_s"] = {"after_sigterm": round(restart_ingress(stack, signal.SIGTERM, newest), 2),
                                    "after_sigkill": round(restart_ingress(stack, signal.SIGKILL, newest), 2)}
    figures["worker_restart_s"] = {"after_sigterm": round(restart_worker(stack, signal.SIGTERM, probe), 2),
                                   "after_sigkill": round(restart_worker(stack, signal.SIGKILL, probe + 1), 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reach-scale-") as tmp, Stack(Path(tmp)) as stack:
        loaded = 0
        for n, size in enumerate(sorted(args.sizes)):
            seconds = asyncio.run(load(stack, loaded, size))
            print(f"loaded {size - loaded} resources in {seconds:.1f}s ({(size - loaded) / seconds:.0f}/s)", flush=True)
            loaded = size
            row = measure_at(stack, size, probe=2 * n)
            rows.append(row)
            print(json.dumps(row), flush=True)
    (RESULTS / "scale.json").write_text(json.dumps({"rows": rows, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=2))
    print(f"wrote {RESULTS / 'scale.json'}")


if __name__ == "__main__":
    main()
