"""What a worker joining, dying or coming back costs the clients, measured black-box.

While bulk uploads go on, a probe batch holding one record for every ingest partition is
posted every `PROBE_EVERY_S`, and each probe's seconds until terminal are recorded; a probe is
terminal only once every partition processed its record, so the slowest probe sent after an
event is how long the event paused some partition's processing. Reads of stored resources go
on meanwhile, and every answer that is not the resource is counted with how long it took.

Used by `bench.scale` at each size: a second worker joins (1 → 2), one of two is SIGKILLed
(2 → 1), it starts again on its disk (1 → 2), and a third, new worker joins (2 → 3).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import orjson

from bench.stack import Stack, batch_body
from harness.processes import ServiceProcess, free_port
from reach.token import make_token
from schemas.events import resource_key
from topics.partitioning import partition_for

PROBE_EVERY_S = 0.25
READ_EVERY_S = 0.05
BULK_RECORDS_PER_S = 2000
SETTLE_S = 20.0  # an event's effects are looked for in the probes sent this long after it
MAX_PAUSE_S = 1800.0
ASKED = "asking for a rebalance to take my share"  # logged by a worker whose standbys are current
READY = "Worker ready"  # logged by a worker at the end of each recovery


@dataclass
class Timeline:
    """Probes (sent at, seconds to terminal) and failed reads (at, seconds, what came back)."""

    probes: list[tuple[float, float]] = field(default_factory=list)
    reads: int = 0
    refused: int = 0  # uploads not answered 202
    bad_reads: list[tuple[float, float, str]] = field(default_factory=list)

    def pause_after(self, at: float, until: float | None = None) -> float:
        """The longest a probe sent between `at` and `until` (default: SETTLE_S later) took:
        some partition's processing paused that long."""
        until = at + SETTLE_S if until is None else until
        return max((s for t, s in self.probes if at <= t <= until), default=float("nan"))

    def reads_after(self, at: float, until: float) -> dict[str, Any]:
        bad = [(t, s, what) for t, s, what in self.bad_reads if at <= t <= until]
        return {"failed": len(bad), "failed_s": round(sum(s for _, s, _ in bad), 2),
                "answers": sorted({what for _, _, what in bad})}


def probe_ids(partitions: int, partner: str, tenant: str, definition_id: str) -> list[str]:
    """One external id per ingest partition."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        external_id = f"probe-{n}"
        found.setdefault(partition_for(resource_key(partner, tenant, definition_id, external_id), partitions),
                         external_id)
        n += 1
    return [found[p] for p in sorted(found)]


class WorkerEvents:
    """Bulk load, probes and reads against `stack` while workers come and go."""

    def __init__(self, stack: Stack, stored_ids: list[str]) -> None:
        self.stack, self.stored_ids = stack, stored_ids
        self.timeline = Timeline()
        self.headers = {"Authorization": f"Bearer {stack.tenant}", "content-type": "application/json"}
        self.ids = probe_ids(stack.settings.topic_partitions, "bench", "tenant-1", stack.definition_id)
        self.workers: list[ServiceProcess] = [stack.worker]
        self._stop = asyncio.Event()
        self.outstanding: dict[int, float] = {}  # probe number -> sent at, until terminal

    def start_worker(self, n: int, port: int | None = None) -> ServiceProcess:
        """Worker `n` (its web port names its data folder: the same port, the same disk)."""
        settings = replace(self.stack.settings, worker_web_port=port or free_port())
        return ServiceProcess(["-m", "processors.worker"], settings, self.stack.workdir / f"worker-{n}.log").start()

    async def _probe(self, http: httpx.AsyncClient, n: int) -> None:
        body = orjson.dumps({"resources": [{"id": i, "email": f"probe{n}@example.com"} for i in self.ids]})
        sent = time.monotonic()
        self.outstanding[n] = sent
        try:
            response = await http.post("/api/resources/customer/batch", content=body, headers=self.headers)
            if response.status_code != 202:
                self.timeline.refused += 1
                return  # an upload refused is the ingress's matter, not a partition's pause
            batch_id = response.json()["data"]["batchId"]
            while not self._stop.is_set():
                answer = await http.get(f"/api/batches/{batch_id}", headers=self.headers)
                if answer.status_code == 200 and answer.json()["data"]["status"] in ("success", "partial_success",
                                                                                    "failed"):
                    self.timeline.probes.append((sent, time.monotonic() - sent))
                    return
                await asyncio.sleep(0.05)
        finally:
            self.outstanding.pop(n, None)

    async def _asked_for_share(self, worker: ServiceProcess, at: float, before: tuple[int, int],
                               log: Any) -> float | None:
        """Seconds from `at` until `worker`'s standbys were current and it asked for its share
        of partitions; None if it became ready without asking (it got no standby to take)."""
        ready_at = None
        while time.monotonic() - at < MAX_PAUSE_S:
            text = worker.log()
            if text.count(ASKED) > before[0]:
                return time.monotonic() - at
            if ready_at is None and text.count(READY) > before[1]:
                ready_at = time.monotonic()
            if ready_at is not None and time.monotonic() - ready_at > 5:
                return None
            await asyncio.sleep(0.25)
        log(f"  not ready within {MAX_PAUSE_S} s", flush=True)
        return None

    async def _probes_done(self, upto: float, log: Any) -> None:
        """Wait until every probe sent before `upto` is terminal (at most MAX_PAUSE_S)."""
        started = time.monotonic()
        while any(sent <= upto for sent in self.outstanding.values()):
            if time.monotonic() - started > MAX_PAUSE_S:
                log(f"  probes still not terminal after {MAX_PAUSE_S} s", flush=True)
                return
            if int(time.monotonic() - started) % 30 == 29:
                log(f"  waiting for {len(self.outstanding)} probes ({time.monotonic() - upto:.0f} s)", flush=True)
            await asyncio.sleep(1)

    async def _probes(self) -> None:
        async with httpx.AsyncClient(base_url=self.stack.base, timeout=60) as http:
            tasks, n = [], 0
            while not self._stop.is_set():
                tasks.append(asyncio.create_task(self._probe(http, n)))
                n += 1
                await asyncio.sleep(PROBE_EVERY_S)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reads(self) -> None:
        rng = random.Random(7)
        async with httpx.AsyncClient(base_url=self.stack.base, timeout=30) as http:
            while not self._stop.is_set():
                external_id = rng.choice(self.stored_ids)
                started = time.monotonic()
                try:
                    response = await http.get(f"/api/resources/customer/{external_id}", headers=self.headers)
                    what = "" if response.status_code == 200 and \
                        response.json()["data"]["result"]["resourceExternalId"] == external_id \
                        else str(response.status_code)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    what = type(exc).__name__
                self.timeline.reads += 1
                if what:
                    self.timeline.bad_reads.append((started, time.monotonic() - started, what))
                await asyncio.sleep(READ_EVERY_S)

    async def _bulk(self) -> None:
        """Another tenant's uploads, BULK_RECORDS_PER_S at most, backing off when refused."""
        headers = {**self.headers, "Authorization": f"Bearer {make_token(self.stack.settings, 'bench', 'bulk')}"}
        async with httpx.AsyncClient(base_url=self.stack.base, timeout=60) as http:
            n = 0
            while not self._stop.is_set():
                started = time.monotonic()
                response = await http.post("/api/resources/customer/batch", headers=headers,
                                           content=batch_body("failover-bulk", 100, n % 10_000))
                n += 100
                pause = 100 / BULK_RECORDS_PER_S - (time.monotonic() - started)
                if response.status_code != 202:
                    self.timeline.refused += 1
                    pause = float(response.headers.get("retry-after", 1))
                await asyncio.sleep(max(0.0, pause))

    async def run(self, log: Any = print) -> dict[str, Any]:
        """Join, kill, restart, join; the figures of each."""
        background = [asyncio.create_task(c) for c in (self._probes(), self._reads(), self._bulk())]
        figures: dict[str, Any] = {}
        try:
            await asyncio.sleep(SETTLE_S)
            figures["steady_probe_s"] = round(self.timeline.pause_after(time.monotonic() - SETTLE_S), 2)
            log(f"  one worker: longest probe {figures['steady_probe_s']} s", flush=True)
            steps = [("join 1 -> 2", "join_second"), ("SIGKILL 1 of 2", "kill_one_of_two"),
                     ("restart it on its disk", "restart_killed"), ("join 2 -> 3 (new, empty disk)", "join_third")]
            second: ServiceProcess | None = None
            for title, name in steps:
                at = time.monotonic()
                before = (0, 0)
                if name == "join_second":
                    second = self.start_worker(2)
                    self.workers.append(second)
                elif name == "kill_one_of_two":
                    assert second is not None
                    second.stop(signal.SIGKILL)
                    self.workers.remove(second)
                elif name == "restart_killed":
                    assert second is not None
                    text = second.log()  # its log goes on in the same file
                    before = (text.count(ASKED), text.count(READY))
                    second = self.start_worker(2, second.settings.worker_web_port)
                    self.workers.append(second)
                else:
                    self.workers.append(self.start_worker(3))
                warm_s = None
                if name != "kill_one_of_two":
                    # A worker joining first restores standbys, then asks for its share.
                    warm_s = await self._asked_for_share(self.workers[-1], at, before, log)
                await asyncio.sleep(SETTLE_S)
                until = time.monotonic()
                await self._probes_done(until, log)
                await asyncio.sleep(5)
                figures[name] = {"paused_s": round(self.timeline.pause_after(at, until), 2),
                                 "warm_after_s": round(warm_s, 1) if warm_s is not None else None,
                                 **self.timeline.reads_after(at, until)}
                log(f"  {title}: longest probe {figures[name]['paused_s']} s; asked for its share after "
                    f"{figures[name]['warm_after_s']} s; reads not answered right: {figures[name]['failed']}",
                    flush=True)
        finally:
            self._stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            for worker in self.workers[1:]:
                worker.stop()
        figures["reads"] = self.timeline.reads
        figures["uploads_refused"] = self.timeline.refused
        return figures


def main() -> None:
    """Load `--size` resources into a fresh stack and run the worker events once."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from bench.scale import load, resource_id

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100, help="records per upload while loading")
    parser.add_argument("--partitions", type=int, default=None,
                        help="REACH_TOPIC_PARTITIONS (default 4: a third worker then gets no partition)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="reach-failover-")  # kept: the processes' logs are there
    print(f"logs in {tmp}", flush=True)
    stack = Stack(Path(tmp), ingress_processes=1)
    if args.partitions is not None:
        stack.settings = replace(stack.settings, topic_partitions=args.partitions)
    with stack:
        seconds, _ = asyncio.run(load(stack, 0, args.size, args.batch_size))
        print(f"loaded {args.size:,} resources in {seconds:.1f}s", flush=True)
        figures = asyncio.run(WorkerEvents(stack, [resource_id(i) for i in range(args.size)]).run())
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
