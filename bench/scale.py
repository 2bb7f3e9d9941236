"""How the service behaves as stored data grows: `make bench-scale SIZES="10000 200000 2000000"`.

One stack (broker, one ingress, one worker; `bench.stack.Stack`) is loaded over HTTP with
batches of `--batch-size` records (default 100, so 2,000,000 resources are 20,000 batches)
into one tenant's schema, up to each size in turn. At each size it prints and records:

- each process's memory: peak (VmHWM) and current (VmRSS) of the ingress and the worker;
- a resource GET (p50, p99) and a list page of 100, first page and one 90% deep (p50);
- the batch list, a page of 100, first and 90% deep (p50);
- an ingress restarted on the same disk, after SIGTERM and after SIGKILL, and a new ingress
  with an empty disk: seconds from its start until it answers a read of the newest resource;
- the worker restarted after SIGTERM and after SIGKILL: seconds from its start until a newly
  queued batch is terminal;
- CPU of every process but the broker and the client, per applied record, with 1, 2 and 4
  ingress processes (`REACH_INGRESS_PROCESSES`), each loading the same 50 batches of 1000;
- workers joining, dying and coming back under load (`bench.failover`): how long a partition's
  processing paused, and the reads not answered right meanwhile.

Writes `bench/results/scale.json` and `bench/results/scale.png`. Figures are measurements,
not pass/fail checks.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from bench.failover import WorkerEvents
from bench.stack import (
    RESULTS,
    Stack,
    batch_body,
    children_of,
    cpu_seconds,
    percentile,
    post_batches,
    wait_all_terminal,
)
from harness.processes import ServiceProcess, free_port
from ingest.pagination import encode_cursor
from processors.app import worker_datadir
from reach.config import Settings

RUN = "scale"


def memory_mb(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            found[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"peak": found.get("VmHWM", float("nan")), "now": found.get("VmRSS", float("nan"))}


def resource_id(i: int) -> str:
    return f"{RUN}-{i:07d}"


async def load(stack: Stack, start: int, end: int, batch_size: int, concurrency: int = 8) -> tuple[float, list[str]]:
    """Upload resources [start, end) and wait until every batch is terminal, showing progress."""
    started = time.monotonic()
    ids: list[str] = []
    step = 50_000
    for chunk in range(start, end, step):
        upto = min(end, chunk + step)
        bodies = [batch_body(RUN, min(batch_size, upto - i), i) for i in range(chunk, upto, batch_size)]
        _, chunk_ids, _ = await post_batches(stack, bodies, concurrency)
        await wait_all_terminal(stack, chunk_ids, timeout_s=3600)
        ids.extend(chunk_ids)
        elapsed = time.monotonic() - started
        print(f"  {upto:,} resources stored ({(upto - start) / elapsed:,.0f}/s end to end)", flush=True)
    return time.monotonic() - started, ids


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


def time_to_read(stack: Stack, process: ServiceProcess, base: str, newest: str) -> float:
    """Seconds from `process`'s start until it answers a read of `newest`."""
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {stack.tenant}"}
    while True:
        try:
            if httpx.get(f"{base}/api/resources/customer/{newest}", headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if process.proc.poll() is not None:
            raise RuntimeError(f"the ingress exited: {process.log()[-2000:]}")
        if time.monotonic() - started > 1800:
            raise TimeoutError("the ingress did not answer within 30 min")
        time.sleep(0.05)


def restart_ingress(stack: Stack, sig: int, newest: str) -> float:
    """Seconds from a new ingress process's start, on the same disk, until it answers a read of `newest`."""
    stack.ingress.stop(sig)
    stack.ingress = ServiceProcess(["-m", "ingest.server"], stack.settings, stack.workdir / "ingress.log").start()
    return time_to_read(stack, stack.ingress, stack.base, newest)


def fresh_ingress(stack: Stack, newest: str, n: int) -> float:
    """Seconds from the start of a second ingress with an empty disk until it answers a read of `newest`."""
    settings = replace(stack.settings, http_port=free_port(), ingress_id=f"scale-fresh-{n}")
    process = ServiceProcess(["-m", "ingest.server"], settings, stack.workdir / f"fresh-ingress-{n}.log").start()
    try:
        return time_to_read(stack, process, f"http://127.0.0.1:{settings.http_port}", newest)
    finally:
        process.stop()


def restart_worker(stack: Stack, sig: int, probe: int) -> float:
    """Seconds from a new worker process's start until a batch queued for it is terminal."""
    stack.worker.stop(sig)
    batch_id = asyncio.run(post_batches(stack, [batch_body(f"probe{probe}", 1)], 1))[1][0]
    stack.worker = ServiceProcess(["-m", "processors.worker"], stack.settings, stack.workdir / "worker.log").start()
    started = time.monotonic()
    asyncio.run(wait_all_terminal(stack, [batch_id], timeout_s=1800))
    return time.monotonic() - started


def cpu_per_record(stack: Stack, processes: int, batches: int = 50) -> dict[str, float]:
    """µs of CPU per applied record of every process but the broker and this client, with
    `processes` ingress processes, over `batches` batches of 1000 (updates of stored resources)."""
    stack.restart_ingress(replace(stack.settings, ingress_processes=processes))
    pids = [stack.worker.proc.pid, stack.reader.proc.pid, stack.ingress.proc.pid, *children_of(stack.ingress.proc.pid)]
    before, started = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
    _, ids, _ = asyncio.run(post_batches(stack, [batch_body(RUN, 1000, i * 1000) for i in range(batches)], 4))
    asyncio.run(wait_all_terminal(stack, ids, timeout_s=1800))
    seconds, records = time.monotonic() - started, batches * 1000
    used = sum(cpu_seconds(pid) for pid in pids) - before
    return {"us_per_record": round(used / records * 1e6, 1), "records_per_s": round(records / seconds)}


def measure_at(stack: Stack, size: int, batch_ids: list[str], n: int) -> dict[str, Any]:
    rng = random.Random(size)
    figures: dict[str, Any] = {"resources": size, "batches": len(batch_ids)}
    figures["memory_mb"] = {"ingress": memory_mb(stack.ingress.proc.pid), "worker": memory_mb(stack.worker.proc.pid),
                            "reader": memory_mb(stack.reader.proc.pid)}
    gets = timed_gets(stack, [(f"/api/resources/customer/{resource_id(rng.randrange(size))}", {}) for _ in range(200)])
    figures["get_ms"] = {"p50": round(statistics.median(gets) * 1000, 2), "p99": round(percentile(gets, 99) * 1000, 2)}
    first = timed_gets(stack, [("/api/resources/customer", {"limit": "100"})] * 20)
    deep_cursor = encode_cursor(resource_id(int(size * 0.9)))
    deep = timed_gets(stack, [("/api/resources/customer", {"limit": "100", "cursor": deep_cursor})] * 20)
    figures["page_ms"] = {"first_p50": round(statistics.median(first) * 1000, 2),
                          "deep_p50": round(statistics.median(deep) * 1000, 2)}
    first = timed_gets(stack, [("/api/batches", {"limit": "100"})] * 20)
    deep_cursor = encode_cursor(batch_ids[int(len(batch_ids) * 0.1)])  # newest first: 90% deep
    deep = timed_gets(stack, [("/api/batches", {"limit": "100", "cursor": deep_cursor})] * 20)
    figures["batch_page_ms"] = {"first_p50": round(statistics.median(first) * 1000, 2),
                                "deep_p50": round(statistics.median(deep) * 1000, 2)}
    newest = resource_id(size - 1)
    figures["ingress_restart_s"] = {"after_sigterm": round(restart_ingress(stack, signal.SIGTERM, newest), 2),
                                    "after_sigkill": round(restart_ingress(stack, signal.SIGKILL, newest), 2),
                                    "new_empty_disk": round(fresh_ingress(stack, newest, n), 2)}
    figures["worker_restart_s"] = {"after_sigterm": round(restart_worker(stack, signal.SIGTERM, 2 * n), 2),
                                   "after_sigkill": round(restart_worker(stack, signal.SIGKILL, 2 * n + 1), 2)}
    figures["disk_mb"] = disk_mb(stack.settings)
    # Twice each, alternately: the machine is shared and noisy.
    runs: dict[int, list[dict[str, float]]] = {}
    for k in (1, 2, 4, 1, 2, 4):
        runs.setdefault(k, []).append(cpu_per_record(stack, k))
    figures["cpu_us_per_record"] = {
        str(k): {"median": statistics.median(r["us_per_record"] for r in found), "runs": found}
        for k, found in runs.items()}
    stack.restart_ingress(replace(stack.settings, ingress_processes=1))
    print(f"  CPU per record: {json.dumps(figures['cpu_us_per_record'])}", flush=True)
    sample = [resource_id(rng.randrange(size)) for _ in range(1000)]
    figures["workers"] = asyncio.run(WorkerEvents(stack, sample).run())
    return figures


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["resources"] for r in rows]
    fig, (memory, restart) = plt.subplots(1, 2, figsize=(12, 4.5))
    for who in ("ingress", "worker"):
        memory.plot(sizes, [r["memory_mb"][who]["peak"] for r in rows], marker="o", label=f"{who} peak RSS")
    memory.set_xscale("log")
    memory.set_ylim(bottom=0)
    memory.set_xlabel("resources stored")
    memory.set_ylabel("MB")
    memory.set_title("Memory")
    memory.legend()
    for label, pick in (("worker after SIGTERM", lambda r: r["worker_restart_s"]["after_sigterm"]),
                        ("worker after SIGKILL", lambda r: r["worker_restart_s"]["after_sigkill"]),
                        ("ingress after SIGKILL", lambda r: r["ingress_restart_s"]["after_sigkill"]),
                        ("new ingress, empty disk", lambda r: r["ingress_restart_s"]["new_empty_disk"])):
        restart.plot(sizes, [pick(r) for r in rows], marker="o", label=label)
    restart.set_xscale("log")
    restart.set_ylim(bottom=0)
    restart.set_xlabel("resources stored")
    restart.set_ylabel("seconds from start to serving")
    restart.set_title("Restart")
    restart.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    # One ingress process: what one process's memory and restart time do as data grows.
    with tempfile.TemporaryDirectory(prefix="reach-scale-") as tmp, Stack(Path(tmp), ingress_processes=1) as stack:
        loaded, batch_ids = 0, []
        for n, size in enumerate(sorted(args.sizes)):
            seconds, ids = asyncio.run(load(stack, loaded, size, args.batch_size))
            batch_ids.extend(ids)
            print(f"loaded {size - loaded:,} resources in {seconds:.1f}s ({(size - loaded) / seconds:,.0f}/s)",
                  flush=True)
            loaded = size
            row = measure_at(stack, size, batch_ids, n)
            rows.append(row)
            print(json.dumps(row), flush=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ")
    (RESULTS / "scale.json").write_text(json.dumps({"rows": rows, "when": when}, indent=2))
    chart(rows, RESULTS / "scale.png")
    print(f"wrote {RESULTS / 'scale.json'} and {RESULTS / 'scale.png'}")


def disk_mb(settings: Settings) -> dict[str, float]:
    """Disk used under the data folder: the ingress's ledger, the first worker's stores, the reader's."""
    def size(path: Path) -> float:
        return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024 / 1024, 1)
    return {"ingress": size(settings.data_dir / "ingress"), "worker": size(worker_datadir(settings)),
            "reader": size(settings.data_dir / "reader")}


if __name__ == "__main__":
    main()
