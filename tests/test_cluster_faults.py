"""A real cluster's faults as a client sees them: three Kafka nodes (replication factor 3,
`min.insync.replicas=2`), a worker, a reader and an ingress as separate processes, clients
uploading without pause (each upload with its Idempotency-Key, retried with it after a 503 or
409) and reading, while nodes are stopped, killed and paused.

After every fault: every answer came within the produce timeout + 2 s (202 or 503, never a
hang), every upload was accepted in the end, each exactly once (one committed batch per
upload, one committed outcome per record), every batch terminal, the resources hold the merge
of exactly the accepted uploads, and Kafka's own `find-hanging` finds no transaction left open.

The short matrix runs in `make test`: a rolling restart (each node SIGTERMed in turn), the
node coordinating the ingress's transactions SIGKILLed, the leader of most ingest partitions
paused 5 s (longer than the produce timeout here). The full matrix (`-m soak`) adds the leader
SIGKILLed, the workers' group coordinator SIGKILLed, a pause of 45 s, two of three nodes
SIGKILLed for 30 s (no quorum), and a worker paused past its transaction timeout (a zombie).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient, CoordinationType

from reach.broker import LocalBroker, LocalCluster, hanging_transactions
from reach.config import Settings
from tests.support import (
    SUMMARY,
    TERMINAL,
    ServiceProcess,
    bearer,
    committed_outcomes,
    free_port,
    free_port_block,
    isolated_settings,
    partner_token,
    readers,
    records_per_upload,
    tenant_token,
    wait_ingress_ready,
    wait_terminal,
    wait_until,
)

PRODUCE_TIMEOUT_S = 3.0
BOUND_S = PRODUCE_TIMEOUT_S + 2  # every answer during every fault, 202 or 503
OWN = 4  # resources an upload creates; it also merges a field into one of its predecessor's
GIVE_UP_S = 120.0  # a client retrying one upload this long reports it not accepted
SCHEMA = {"name": "Customer", "externalIdField": "id",
          "schema": {"type": "object", "required": ["id"], "properties": {
              "id": {"type": "string"}, "a": {"type": "integer"}, "b": {"type": "integer"}}}}


def _records(number: int, previous: int | None) -> list[dict[str, Any]]:
    """Upload `number`'s records: its own resources with `a`, and `b` merged into the first of
    the same client's previous upload (accepted before this one was sent, so applied before)."""
    own = [{"id": f"u{number}-r{i}", "a": number} for i in range(OWN)]
    return own + ([{"id": f"u{previous}-r0", "b": number}] if previous is not None else [])


@dataclass
class Answer:
    sent: float  # monotonic
    seconds: float
    code: int | str  # "no answer" for a timeout, the exception's name for a broken connection
    what: str


@dataclass
class Clients:
    """Uploads back to back from `uploaders` threads, and reads from one, until stopped."""

    base: str
    headers: dict[str, str]
    uploaders: int = 2
    answers: list[Answer] = field(default_factory=list)
    reads: list[Answer] = field(default_factory=list)
    accepted: dict[str, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)  # tag -> (batchId, records)
    given_up: list[str] = field(default_factory=list)
    terminal: dict[str, float] = field(default_factory=dict)  # batchId -> when first seen terminal
    accepted_at: dict[str, float] = field(default_factory=dict)  # batchId -> when answered 202
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: Iterator[int] = field(default_factory=lambda: iter(range(10**9)))

    def start(self) -> Clients:
        self._threads = [threading.Thread(target=self._upload, daemon=True) for _ in range(self.uploaders)]
        for thread in self._threads:
            thread.start()
        return self

    def start_reads(self, batch_id: str, resource_id: str) -> None:
        """Read a stored resource and a finished batch's status every 0.25 s."""
        thread = threading.Thread(target=self._read, args=(batch_id, resource_id), daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(GIVE_UP_S + 30)

    def _timed(self, http: httpx.Client, method: str, path: str, what: str, **kwargs: Any) -> tuple[Answer, Any]:
        sent = time.monotonic()
        body = None
        try:
            response = http.request(method, path, **kwargs)
            code: int | str = response.status_code
            body = response
        except httpx.TimeoutException:
            code = "no answer"
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        return Answer(sent, round(time.monotonic() - sent, 3), code, what), body

    def _upload(self) -> None:
        previous: int | None = None
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=BOUND_S + 30) as http:
            while not self._stop.is_set():
                with self._lock:
                    number = next(self._numbers)
                tag = f"u{number}"
                records = _records(number, previous)
                body = {"resources": records}
                first = time.monotonic()
                while True:
                    answer, response = self._timed(http, "POST", "/api/resources/customer/batch", tag,
                                                   json=body, headers={"Idempotency-Key": tag})
                    with self._lock:
                        self.answers.append(answer)
                    if answer.code == 202:
                        with self._lock:
                            self.accepted[tag] = (response.json()["data"]["batchId"], records)
                            self.accepted_at[response.json()["data"]["batchId"]] = time.monotonic()
                        previous = number
                        break
                    if isinstance(answer.code, int) and answer.code not in (409, 429, 503):
                        with self._lock:
                            self.given_up.append(f"{tag}: answered {answer.code}: {response.text[:300]}")
                        return
                    if time.monotonic() - first > GIVE_UP_S:
                        with self._lock:
                            self.given_up.append(f"{tag}: last {answer}")
                        return
                    # A client's back-off, as the 503's Retry-After asks (at most a second here).
                    retry_after = response.headers.get("Retry-After", "1") if response is not None else "1"
                    self._stop.wait(min(1.0, float(retry_after) if retry_after.isdigit() else 1.0) / 4)

    def start_watching(self) -> None:
        """Follow every accepted batch to its end, oldest first: when each was seen terminal."""
        thread = threading.Thread(target=self._watch, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _watch(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=BOUND_S + 30) as http:
            while not self._stop.is_set():
                with self._lock:
                    waiting = [b for b, _ in self.accepted.values() if b not in self.terminal]
                if not waiting:
                    self._stop.wait(0.05)
                    continue
                try:
                    response = http.get(f"/api/batches/{waiting[0]}")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and response.json()["data"]["status"] in TERMINAL:
                    self.terminal[waiting[0]] = time.monotonic()
                else:
                    self._stop.wait(0.05)

    def _read(self, batch_id: str, resource_id: str) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=BOUND_S + 30) as http:
            while not self._stop.wait(0.25):
                for path in (f"/api/resources/customer/{resource_id}", f"/api/batches/{batch_id}"):
                    answer, _ = self._timed(http, "GET", path, path)
                    self.reads.append(answer)

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.sent <= end]

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)


@dataclass
class Phase:
    name: str
    started: float
    ended: float = 0.0  # the fault is over: every node runs again
    resumed: float = 0.0  # an upload sent after `ended` is terminal
    in_sync: float = 0.0  # every partition has its three replicas in sync again
    notes: list[str] = field(default_factory=list)


@dataclass
class Deployment:
    cluster: LocalCluster
    settings: Settings
    clients: Clients
    workers: list[ServiceProcess]
    tmp_path: Path
    phases: list[Phase] = field(default_factory=list)

    # -- where things are -----------------------------------------------------------------

    def coordinator(self, kind: CoordinationType, key: str) -> int:
        async def ask() -> int:
            client = AIOKafkaClient(bootstrap_servers=self.up_bootstrap())
            await client.bootstrap()
            try:
                return int(await client.coordinator_lookup(kind, key))
            finally:
                await client.close()
        return asyncio.run(ask())

    def ingress_coordinator(self) -> int:
        """The node coordinating the transactions of the ingress's first producer."""
        tid = f"{self.settings.topic_prefix}-ingress-{self.settings.ingress_id}-0"
        return self.coordinator(CoordinationType.TRANSACTION, tid)

    def group_coordinator(self) -> int:
        return self.coordinator(CoordinationType.GROUP, self.settings.app_id)

    def ingest_leader(self) -> int:
        """The node leading most partitions of the ingest topic."""
        leaders = self._partitions([f"{self.settings.topic_prefix}.ingest"])
        return collections.Counter(leader for _, leader, _ in leaders).most_common(1)[0][0]

    def up_bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.cluster.brokers if b.pid() is not None)

    def _partitions(self, topics: list[str] | None = None) -> list[tuple[str, int, int]]:
        """(topic, leader, replicas in sync) of every partition of `topics` (default: all)."""
        async def ask() -> list[tuple[str, int, int]]:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.up_bootstrap(), request_timeout_ms=5000)
            await admin.start()
            try:
                names = topics if topics is not None else list(await admin.list_topics())
                described = await admin.describe_topics(names)
                return [(t["topic"], p["leader"], len(p["isr"])) for t in described for p in t["partitions"]]
            finally:
                await admin.close()
        return asyncio.run(ask())

    # -- faults ---------------------------------------------------------------------------

    def node(self, node_id: int) -> LocalBroker:
        return self.cluster.node(node_id)

    def signal_node(self, node_id: int, sig: int) -> None:
        pid = self.node(node_id).pid()
        assert pid is not None, f"node {node_id} is not running"
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self.node(node_id).wait_stopped(pid)

    def phase(self, name: str) -> Phase:
        phase = Phase(name, time.monotonic())
        self.phases.append(phase)
        return phase

    def recover(self, phase: Phase) -> None:
        """After the fault: an upload sent now is terminal (processing resumed), and every
        partition is back to three replicas in sync (the next fault starts from a whole cluster)."""
        phase.ended = time.monotonic()
        before = self.clients.accepted_count()
        wait_until(lambda: self.clients.accepted_count() > before + 2, 120, 0.05,
                   what=f"uploads to be accepted again after {phase.name}",
                   seen=lambda: f"last answers {self.clients.answers[-3:]}")
        # The first upload sent after the fault's end that was accepted, until terminal.
        with self.clients._lock:
            after = sorted((a.sent, a.what) for a in self.clients.answers if a.sent >= phase.ended and a.code == 202)
            batch_id = self.clients.accepted[after[0][1]][0]
        with httpx.Client(base_url=self.clients.base, timeout=BOUND_S + 30) as http:
            wait_terminal(http, batch_id, self.clients.headers, 180)
        phase.resumed = time.monotonic()
        wait_until(lambda: all(isr == 3 for _, _, isr in self._partitions()), 180, 0.5,
                   what=f"every partition's replicas in sync again after {phase.name}",
                   seen=lambda: [p for p in self._partitions() if p[2] < 3][:10])
        phase.in_sync = time.monotonic()

    def run_for(self, seconds: float) -> None:
        """Let the load go on for `seconds` with the fault in place (the fault's own duration)."""
        threading.Event().wait(seconds)

    def uploads_accepted_since(self, since: float, count: int, timeout_s: float) -> None:
        wait_until(lambda: len([a for a in self.clients.answers if a.sent >= since and a.code == 202]) >= count,
                   timeout_s, 0.05, what=f"{count} uploads accepted",
                   seen=lambda: f"last answers {self.clients.answers[-3:]}, refused {self.clients.given_up[:3]}")


# -- the faults, each ending with the cluster whole again ------------------------------------

def rolling_restart(d: Deployment) -> None:
    for node_id in (1, 2, 3):
        phase = d.phase(f"node {node_id} SIGTERMed and started again (rolling restart)")
        d.node(node_id).stop()
        d.uploads_accepted_since(time.monotonic(), 3, 120)  # the cluster works on without it
        d.cluster.start_node(node_id)
        d.recover(phase)


def kill_node(d: Deployment, name: str, which: Callable[[Deployment], int]) -> None:
    node_id = which(d)
    phase = d.phase(f"node {node_id}, {name}, SIGKILLed")
    d.signal_node(node_id, signal.SIGKILL)
    d.uploads_accepted_since(time.monotonic(), 3, 120)
    d.cluster.start_node(node_id)
    d.recover(phase)


def pause_node(d: Deployment, seconds: float) -> None:
    node_id = d.ingest_leader()
    phase = d.phase(f"node {node_id} (leading most ingest partitions) paused {seconds:.0f} s")
    d.signal_node(node_id, signal.SIGSTOP)
    try:
        d.run_for(seconds)
    finally:
        d.signal_node(node_id, signal.SIGCONT)
    d.recover(phase)


def no_quorum(d: Deployment, seconds: float) -> None:
    phase = d.phase(f"nodes 2 and 3 SIGKILLed for {seconds:.0f} s (no quorum)")
    for node_id in (2, 3):
        d.signal_node(node_id, signal.SIGKILL)
    d.run_for(seconds)
    for node_id in (2, 3):
        d.node(node_id).launch()
    for node_id in (2, 3):
        d.node(node_id).wait_answering()
    d.recover(phase)


def zombie_worker(d: Deployment) -> None:
    """One of two workers paused past its transaction timeout, its partitions taken over by the
    other, then resumed: nothing it sends after resuming may be visible (the audits tell)."""
    victim = d.workers[0]
    phase = d.phase("a worker paused 70 s (past its session and transaction timeouts), then resumed")
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        d.run_for(70)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    d.recover(phase)


SHORT: list[tuple[str, Callable[[Deployment], None]]] = [
    ("rolling restart", rolling_restart),
    ("ingress transaction coordinator killed",
     lambda d: kill_node(d, "coordinator of the ingress's transactions", Deployment.ingress_coordinator)),
    ("leader paused 5 s", lambda d: pause_node(d, 5)),
]
FULL: list[tuple[str, Callable[[Deployment], None]]] = [
    *SHORT,
    ("ingest leader killed", lambda d: kill_node(d, "leading most ingest partitions", Deployment.ingest_leader)),
    ("group coordinator killed",
     lambda d: kill_node(d, "the workers' group coordinator", Deployment.group_coordinator)),
    ("leader paused 45 s", lambda d: pause_node(d, 45)),
    ("no quorum 30 s", lambda d: no_quorum(d, 30)),
    ("zombie worker", zombie_worker),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(work_dir=tmp_path / "kafka", nodes=3, port=free_port_block(6))
    cluster.start()
    try:
        yield cluster
    finally:
        for broker in cluster.brokers:  # a paused node would not stop
            if (pid := broker.pid()) is not None:
                os.kill(pid, signal.SIGCONT)
        cluster.stop()


def _run_matrix(cluster: LocalCluster, tmp_path: Path, faults: list[tuple[str, Callable[[Deployment], None]]],
                workers: int) -> None:
    settings = replace(isolated_settings(cluster.bootstrap, tmp_path / "data"), produce_timeout_s=PRODUCE_TIMEOUT_S,
                       replication_factor=3)
    tenant = bearer(tenant_token())
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
    processes = [ServiceProcess(["-m", "processors.worker"], replace(settings, worker_web_port=free_port()),
                                tmp_path / f"worker{n}.log").start() for n in range(workers)]
    clients: Clients | None = None
    try:
        with readers(settings, tmp_path):
            base = wait_ingress_ready(settings, 120)
            defined = httpx.post(f"{base}/partner/schema-definitions", json=SCHEMA, headers=bearer(partner_token()),
                                 timeout=30)
            assert defined.status_code == 200, defined.text
            clients = Clients(base, tenant).start()
            d = Deployment(cluster, settings, clients, processes, tmp_path)
            d.uploads_accepted_since(0, 5, 120)
            tag, (first, records) = next(iter(clients.accepted.items()))
            with httpx.Client(base_url=base, timeout=30) as http:
                wait_terminal(http, first, tenant, 60)
            clients.start_reads(first, records[0]["id"])
            clients.start_watching()
            for _, fault in faults:
                fault(d)
            clients.stop()
            _audit(d)
    finally:
        if clients is not None:
            clients.stop()
        ingress.stop()
        for process in processes:
            process.stop()


def _audit(d: Deployment) -> None:
    clients, settings = d.clients, d.settings
    logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-2000:]}" for p in d.workers)
    slow = [a for a in clients.answers + clients.reads if not isinstance(a.code, int) or a.seconds > BOUND_S]
    assert not slow, f"answers later than {BOUND_S} s or none: {slow[:20]}"
    assert not clients.given_up, f"uploads never accepted: {clients.given_up}"
    bad_reads = [a for a in clients.reads if a.code != 200]
    assert not bad_reads, f"reads not served: {bad_reads[:20]}"

    # Every batch terminal, and a success: each of its records applied.
    with httpx.Client(base_url=clients.base, headers=clients.headers, timeout=30) as http:
        for tag, (batch_id, records) in sorted(clients.accepted.items()):
            try:
                data = wait_terminal(http, batch_id, clients.headers, 180)
            except AssertionError as exc:  # what a stuck record's trail would start from
                trail = http.get(f"/api/batches/{batch_id}/records").text[:2000]
                raise AssertionError(f"{exc}\n{tag}: records {[r['id'] for r in records]}, outcomes {trail}\n"
                                     f"(the run's files: {d.tmp_path})\n{logs}") from None
            assert data["status"] == "success", (tag, data, logs)
        # The merge of exactly the accepted uploads (each resource written by one client, in order).
        expected: dict[str, dict[str, Any]] = collections.defaultdict(dict)
        for _, records in clients.accepted.values():
            for record in records:
                expected[record["id"]].update(record)
        wrong = []
        for resource_id, fields in sorted(expected.items()):
            response = http.get(f"/api/resources/customer/{resource_id}")
            stored = response.json()["data"]["result"]["data"] if response.status_code == 200 else response.text
            if not isinstance(stored, dict) or {k: stored.get(k) for k in ("id", "a", "b")} != {
                    k: fields.get(k) for k in ("id", "a", "b")}:
                wrong.append((resource_id, fields, stored))
        assert not wrong, (f"{len(wrong)} of {len(expected)} resources not the merge of their accepted writes: "
                           f"{wrong[:5]}")

    # Exactly once: one committed batch per upload, one committed outcome per record.
    per_upload = asyncio.run(records_per_upload(replace(settings, bootstrap_servers=d.up_bootstrap())))
    outcomes = asyncio.run(committed_outcomes(replace(settings, bootstrap_servers=d.up_bootstrap())))
    by_batch: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for batches in per_upload.values():
        for batch_id, n in batches.items():
            by_batch[batch_id]["records"] += n
    accepted_batches = {batch_id: len(records) for batch_id, records in clients.accepted.values()}
    strays = set(by_batch) - set(accepted_batches)
    assert not strays, f"batches committed but never answered 202: {sorted(strays)[:10]}"
    for batch_id, size in accepted_batches.items():
        assert by_batch[batch_id]["records"] == size, (batch_id, by_batch[batch_id])
        counts = [outcomes[(batch_id, index)] for index in range(size)]
        assert counts == [1] * size, f"batch {batch_id}: outcomes per record {counts}"

    hanging = {b.node_id: hanging_transactions(b.bootstrap, b.node_id) for b in d.cluster.brokers}
    assert not any(hanging.values()), f"hanging transactions: {hanging}"

    lines = []
    for phase in d.phases:
        answers = clients.between(phase.started, phase.ended)
        codes = collections.Counter(a.code for a in answers)
        accepted_at = sorted(a.sent + a.seconds for a in answers if a.code == 202)
        gaps = [b - a for a, b in zip([phase.started, *accepted_at], [*accepted_at, phase.ended])]
        during = [b for b, at in clients.accepted_at.items() if phase.started <= at <= phase.ended]
        lags = [clients.terminal[b] - clients.accepted_at[b] for b in during if b in clients.terminal]
        lines.append(f"{phase.name}: fault {phase.ended - phase.started:.1f} s; answers {dict(codes)}, "
                     f"slowest {max((a.seconds for a in answers), default=0):.2f} s; no upload accepted for "
                     f"{max(gaps, default=0):.1f} s at most; processing resumed {phase.resumed - phase.ended:.1f} s "
                     f"after the fault's end; replicas in sync {phase.in_sync - phase.ended:.1f} s after; "
                     f"batches accepted during it ({len(lags)} of {len(during)} followed) terminal after "
                     f"{max(lags, default=0):.1f} s at most")
    ok = [a.seconds for a in clients.answers if a.code == 202]
    SUMMARY.append(f"cluster faults: {len(clients.accepted)} uploads accepted ({len(ok)} answers 202, p50 "
                   f"{statistics.median(ok) * 1000:.0f} ms), every record applied once\n  " + "\n  ".join(lines))


def test_a_rolling_restart_a_killed_coordinator_and_a_paused_leader_lose_and_repeat_nothing(
        cluster: LocalCluster, tmp_path: Path) -> None:
    _run_matrix(cluster, tmp_path, SHORT, workers=1)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_the_full_fault_matrix_loses_and_repeats_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    _run_matrix(cluster, tmp_path, FULL, workers=2)
