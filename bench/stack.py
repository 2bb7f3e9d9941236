"""The benchmarks' stack and the helpers they share: a broker (unless external), one ingress,
one worker and a reader as real processes (`Stack`), uploads and waits over HTTP, and CPU and
memory of processes from /proc."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from harness.processes import ServiceProcess, children_of, free_port, proc_stat, wait_until
from reach.broker import LocalBroker
from reach.config import PROJECT_ROOT, Settings
from reach.token import make_token
from topics import create_topics, service_topics

RESULTS = PROJECT_ROOT / "bench" / "results"
SCHEMA = {
    "name": "Customer", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id", "email"], "properties": {
        "id": {"type": "string"}, "email": {"type": "string", "x-pii-type": "email"},
        "firstName": {"type": "string"}, "lastName": {"type": "string"}, "phone": {"type": "string"},
        "city": {"type": "string"}, "country": {"type": "string"}, "tier": {"type": "string"},
        "score": {"type": "integer"}, "active": {"type": "boolean"}}},
}
ORDER = {
    "name": "Order", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "total": {"type": "number"}, "customer": {"$ref": "reach:schemas/Customer"}}},
}
SHIPMENT = {
    "name": "Shipment", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "carrier": {"type": "string"}, "order": {"$ref": "reach:schemas/Order"}}},
}


RECORD_BYTES = 250  # about what `record` encodes to; ProducerPerformance sends records of this size


def record(i: int, run: str) -> dict[str, Any]:
    """A ~250-byte customer record."""
    return {"id": f"{run}-{i:07d}", "email": f"customer{i}@example-shop.com", "firstName": "Alexandra",
            "lastName": f"Montgomery-{i % 997}", "phone": f"+44 20 7946 {i % 10000:04d}", "city": "Manchester",
            "country": "United Kingdom", "tier": ("bronze", "silver", "gold")[i % 3], "score": i % 1000,
            "active": i % 2 == 0}


def batch_body(run: str, n: int = 1000, start: int = 0) -> bytes:
    return orjson.dumps({"resources": [record(i, run) for i in range(start, start + n)]})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) a process, or one of its threads, has used so far (Linux /proc)."""
    fields = proc_stat(pid, thread)  # utime and stime are fields 14 and 15 of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jit_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time each JIT compiler thread of the JVM `pid` has used so far (Linux /proc), by
    thread id (the JVM starts and ends compiler threads as its queue grows and shrinks)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(("C1 CompilerThre", "C2 CompilerThre")):
                found[int(task.name)] = cpu_seconds(pid, int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
    return found


# The part of the broker's CPU its JIT compiler took (`Stack.cpu_share`): included in "broker".
BROKER_JIT = "broker: JIT compiler"


class CpuShare:
    """How many of the machine's cores each part of the stack used over a stretch of time."""

    def __init__(self, pids: dict[str, list[int]], broker_jit: int | None = None) -> None:
        self.pids = pids
        self.broker_jit = broker_jit  # the broker's pid, to count its JIT compiler apart
        self.started = time.monotonic()
        self.before = self._now()
        self.jit_before = jit_cpu_seconds(broker_jit) if broker_jit is not None else {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}

    def cores(self) -> dict[str, float]:
        """Cores used per part since this was made (CPU seconds over wall seconds); with the
        broker's JIT compiler apart (at least: a compiler thread that ended meanwhile is not
        counted)."""
        wall, now = time.monotonic() - self.started, self._now()
        used = {name: (now[name] - self.before[name]) / wall for name in self.pids}
        if self.broker_jit is not None:
            jit = jit_cpu_seconds(self.broker_jit)
            used[BROKER_JIT] = sum(seconds - self.jit_before.get(tid, 0.0) for tid, seconds in jit.items()) / wall
        return used


def tree_hwm_mb(pid: int) -> float:
    """Peak memory of a process and its children (the ingress's supervisor and its processes)."""
    return vm_hwm_mb(pid) + sum(vm_hwm_mb(child) for child in children_of(pid))


class Stack:
    """Broker (unless external), topics, one ingress and one worker, all real processes."""

    def __init__(self, workdir: Path, ingress_processes: int | None = None) -> None:
        """`ingress_processes`: of `reach ingress` (default: one per core, as it runs by default)."""
        self.workdir = workdir
        self.broker: LocalBroker | None = None
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not external:
            self.broker = LocalBroker(work_dir=workdir / "kafka", port=free_port(), controller_port=free_port(),
                                      heap="-Xms1g -Xmx1g")
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self.settings = replace(
            Settings(), bootstrap_servers=external or (self.broker.bootstrap if self.broker else ""),
            external_broker=True, topic_prefix=prefix, app_id=f"{prefix}-worker", data_dir=workdir / "data",
            http_port=free_port(), worker_web_port=free_port(), reader_urls=(f"http://127.0.0.1:{free_port()}",),
            partner_secrets={"bench": "bench-secret-long-enough-for-hs256-signing!",
                             "bulk": "bulk-secret-long-enough-for-hs256-signing!!"})
        if ingress_processes is not None:
            self.settings = replace(self.settings, ingress_processes=ingress_processes)
        self.base = f"http://127.0.0.1:{self.settings.http_port}"
        self.partner = make_token(self.settings, "bench")
        self.tenant = make_token(self.settings, "bench", "tenant-1")

    def __enter__(self) -> Stack:
        try:
            return self._start()
        except BaseException:
            self._stop()  # else the processes already started outlive the benchmark
            raise

    def _start(self) -> Stack:
        if self.broker is not None:
            started = time.monotonic()
            self.broker.start()
            print(f"broker up in {time.monotonic() - started:.1f}s on {self.broker.bootstrap}", flush=True)
        asyncio.run(create_topics(self.settings.bootstrap_servers, service_topics(self.settings).all()))
        self.reader = ServiceProcess(["-m", "state.reader"], self.settings, self.workdir / "reader.log").start()
        self.ingress = ServiceProcess(["-m", "ingest.server"], self.settings, self.workdir / "ingress.log").start()
        self.worker = ServiceProcess(["-m", "processors.worker"], self.settings, self.workdir / "worker.log").start()
        wait_until(lambda: httpx.get(f"{self.settings.reader_urls[0]}/health", timeout=3).status_code == 200, 90,
                   what="the reader")
        wait_until(lambda: httpx.get(f"{self.base}/ready", timeout=3).status_code == 200, 90, what="the ingress")
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{self.settings.worker_web_port}/state/resources",
                                     params={"key": "-"}, timeout=3).status_code == 200, 90, what="the worker")
        for definition in (SCHEMA, ORDER, SHIPMENT, {**SCHEMA, "name": "Lead"}):
            response = httpx.post(f"{self.base}/partner/schema-definitions", json=definition,
                                  headers={"Authorization": f"Bearer {self.partner}"}, timeout=30)
            response.raise_for_status()
        self.definition_id = httpx.get(f"{self.base}/partner/schema-definitions/customer",
                                       headers={"Authorization": f"Bearer {self.partner}"}).json()["data"]["id"]
        return self

    def restart_ingress(self, settings: Settings) -> None:
        """Run the ingress again with `settings` (its stores read on from where they were)."""
        self.ingress.stop()
        self.settings = settings
        self.ingress = ServiceProcess(["-m", "ingest.server"], settings, self.workdir / "ingress.log").start()
        wait_until(lambda: httpx.get(f"{self.base}/ready", timeout=3).status_code == 200, 90, what="the ingress")

    def cpu_share(self, **more: list[int]) -> CpuShare:
        """Start counting the CPU of the worker, the reader, the ingress's processes, the broker and this client."""
        pids = {"worker": [self.worker.proc.pid], "reader": [self.reader.proc.pid],
                "ingress": [self.ingress.proc.pid, *children_of(self.ingress.proc.pid)],
                "client": [os.getpid()], **more}
        broker = self.broker.pid() if self.broker is not None else None
        if broker is not None:
            pids["broker"] = [broker]
        return CpuShare(pids, broker)

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = {"ingress": tree_hwm_mb(self.ingress.proc.pid), "worker": vm_hwm_mb(self.worker.proc.pid),
                        "reader": vm_hwm_mb(self.reader.proc.pid), "ingress_processes": self.settings.ingress_processes}
        self._stop()

    def _stop(self) -> None:
        for name in ("worker", "ingress", "reader"):
            process: ServiceProcess | None = getattr(self, name, None)
            if process is not None:
                process.stop()
        if self.broker is not None:
            self.broker.stop()


async def post_batches(stack: Stack, bodies: list[bytes], concurrency: int, path: str = "/api/resources/customer/batch",
                       method: str = "POST") -> tuple[float, list[str], list[float]]:
    """Send every body with `concurrency` connections; (seconds, batch ids, per-request seconds)."""
    headers = {"Authorization": f"Bearer {stack.tenant}", "content-type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ids: list[str] = []
    durations: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                response = await http.request(method, path, content=body, headers=headers)
                durations.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text[:300]}")
                ids.append(response.json()["data"]["batchId"])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, ids, durations


async def wait_all_terminal(stack: Stack, batch_ids: list[str], timeout_s: float = 900, poll_s: float = 0.02) -> float:
    """Seconds until every batch is terminal (polling the ingress every `poll_s`)."""
    headers = {"Authorization": f"Bearer {stack.tenant}"}
    pending = set(batch_ids)
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} batches not terminal after {timeout_s}s")
            for batch_id in list(pending):
                response = await http.get(f"/api/batches/{batch_id}", headers=headers)
                if response.status_code == 404:
                    break  # written straight to Kafka: known once a worker has taken one of its records
                data = response.json()["data"]
                if data["status"] in ("success", "partial_success", "failed"):
                    pending.discard(batch_id)
                else:
                    break  # oldest first: no need to ask about the younger ones yet
            if pending:
                await asyncio.sleep(poll_s)
    return time.monotonic()


async def end_to_end(stack: Stack, bodies: list[bytes], path: str = "/api/resources/customer/batch",
                     method: str = "POST") -> float:
    """Records per second (1000 per body) from the first request, four connections at a time,
    until every batch is terminal."""
    started = time.monotonic()
    _, ids, _ = await post_batches(stack, bodies, 4, path, method)
    return len(bodies) * 1000 / (await wait_all_terminal(stack, ids) - started)
