"""Helpers for tests that run real processes against the session's broker."""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from starlette.applications import Starlette
from starlette.testclient import TestClient

from harness.processes import (  # noqa: F401 - the tests import them from here
    OUR_PACKAGES,
    ServiceProcess,
    alive,
    children_of,
    free_port,
    free_port_block,
    proc_stat,
    settings_env,
    wait_until,
)
from ingest.context import Ingress, ingress_of_app
from reach.config import Settings

# An HTTP answer: from a real ingress (httpx) or from Starlette's TestClient (httpx2).
Response = httpx.Response | httpx2.Response

def ingress_context(client: TestClient) -> Ingress:
    """The ingress behind a TestClient of `ingest.app.create_app`'s app."""
    return ingress_of_app(cast(Starlette, client.app))


# Lines a test wants shown in the session's summary (figures of fuzz and fault runs).
SUMMARY: list[str] = []

PARTNER_SECRETS = {"partner-a": "secret-a", "partner-b": "secret-b"}

# The Customer schema most tests upload against.
CUSTOMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["id", "name"],
}


def partner_token(partner: str = "partner-a", secret: str | None = None, ttl_s: int = 600,
                  **claims: object) -> str:
    """A partner-scoped HS256 token; `claims` override or add claims (None removes one)."""
    return _token({"partnerId": partner, "type": "partner"}, partner, secret, ttl_s, claims)


def tenant_token(partner: str = "partner-a", tenant: str = "tenant-1", secret: str | None = None,
                 ttl_s: int = 600, **claims: object) -> str:
    """A tenant-scoped HS256 token for `tenant` of `partner`."""
    return _token({"partnerId": partner, "tenantExternalId": tenant}, partner, secret, ttl_s, claims)


def _token(base: dict, partner: str, secret: str | None, ttl_s: int, claims: dict) -> str:
    import jwt

    payload = {**base, "iat": int(time.time()), "exp": int(time.time()) + ttl_s, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret or PARTNER_SECRETS.get(partner, "unknown"), algorithm="HS256")


def bearer(token: str, tenant: str | None = None) -> dict[str, str]:
    """Request headers for `token`, naming `tenant` in `reach-tenant-id` when given."""
    headers = {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["reach-tenant-id"] = tenant
    return headers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def explained_by(*processes: ServiceProcess, lines: int = 40) -> Iterator[None]:
    """On a failed assertion, add the last `lines` of each process's log to its message."""
    try:
        yield
    except AssertionError as exc:
        tails = "".join(f"\n--- last {lines} lines of {p.log_path.name}:\n" + "\n".join(p.log().splitlines()[-lines:])
                        for p in processes)
        stacks = "".join(f"\n--- what {p.log_path.name}'s process was doing:\n{dump}"
                         for p in processes if (dump := p.stacks()))
        raise AssertionError(f"{exc}{tails}{stacks}") from exc


def isolated_settings(bootstrap: str, data_dir: Path) -> Settings:
    """Settings with topics, consumer group and data folder of this test alone."""
    name = unique("t")
    return replace(
        Settings(), bootstrap_servers=bootstrap, external_broker=True, topic_prefix=name,
        app_id=f"{name}-worker", data_dir=data_dir, http_port=free_port(), worker_web_port=free_port(),
        partner_secrets=dict(PARTNER_SECRETS),
        # A test that kills "the ingress" kills one process (tests/test_ingress_processes.py: several).
        ingress_processes=1,
        reader_urls=(f"http://127.0.0.1:{free_port()}",),
    )


def worker_get(settings: Settings, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{settings.worker_web_port}{path}", params=params, timeout=5)


def wait_worker_ready(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the worker process of `settings` answers on its web port."""
    wait_until(lambda: worker_get(settings, "/state/resources", key="-").status_code == 200, timeout_s,
               what="the worker's web server")


def wait_ingress_ready(settings: Settings, timeout_s: float = 60.0) -> str:
    """Wait until the ingress process of `settings` is ready; return its base URL."""
    base = f"http://127.0.0.1:{settings.http_port}"
    wait_until(lambda: httpx.get(f"{base}/ready", timeout=2).status_code == 200, timeout_s,
               what="the ingress process")
    return base


def wait_reader_ready(settings: Settings, index: int = 0, timeout_s: float = 60.0) -> None:
    """Wait until reader `index` of `settings` answers (it has caught up with its partitions)."""
    url = settings.reader_urls[index]
    wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout_s,
               what=f"reader {index} ({url})")


@contextlib.contextmanager
def readers(settings: Settings, log_dir: Path) -> Iterator[list[ServiceProcess]]:
    """The reader processes of `settings` (`state.reader`), answering; stopped after, and a reader
    that exited with an error fails the test."""
    processes = []
    try:
        for index in range(len(settings.reader_urls)):
            own = replace(settings, reader_index=index)
            processes.append(ServiceProcess(["-m", "state.reader"], own, log_dir / f"reader{index}.log").start())
        for index in range(len(processes)):
            wait_reader_ready(settings, index)
        yield processes
    finally:
        codes = [(p, p.stop()) for p in processes]
    # uvicorn stops cleanly on SIGTERM, then raises it again (exit status -15); -9: a test killed it.
    failed = [f"{p.log_path.name} exited with {code}:\n{p.log()[-3000:]}" for p, code in codes
              if code not in (0, -signal.SIGTERM, -signal.SIGKILL)]
    assert not failed, "\n".join(failed)


@contextlib.contextmanager
def ingresses(settings: Settings, tmp_path: Path, count: int) -> Iterator[list[str]]:
    """`count` ingress instances of one deployment, each its own process and port, and its readers;
    their base URLs."""
    processes, bases = [], []
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(readers(settings, tmp_path))
        for n in range(count):
            own = replace(settings, http_port=free_port(), ingress_id=unique(f"ingress{n}"))
            processes.append(ServiceProcess(["-m", "ingest.server"], own, tmp_path / f"ingress{n}.log").start())
            bases.append(wait_ingress_ready(own))
        yield bases
    finally:
        for process in processes:
            process.stop()
        stack.close()


ORDER_SCHEMA: dict[str, Any] = {"type": "object", "required": ["id"], "properties": {
    "id": {"type": "string"}, "customer": {"$ref": "reach:schemas/Customer"}}}


def define_customer_and_order(base: str) -> dict[str, str]:
    """Create Customer and Order (Order.customer → Customer) through the ingress at `base`;
    their definition ids by name."""
    ids = {}
    for name, schema in (("Customer", CUSTOMER_SCHEMA), ("Order", ORDER_SCHEMA)):
        response = httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner_token()), timeout=30,
                              json={"name": name, "externalIdField": "id", "schema": schema})
        assert response.status_code == 200, response.text
        ids[name] = response.json()["data"]["id"]
    return ids


TERMINAL = ("success", "partial_success", "failed")


def wait_terminal(client: Any, batch_id: str, headers: dict[str, str], timeout_s: float = 60.0) -> dict:
    """Poll `GET /api/batches/{batch_id}` until the batch is terminal; return its data."""
    last: dict[str, Any] = {}

    def probe() -> dict | None:
        response = client.get(f"/api/batches/{batch_id}", headers=headers)
        assert response.status_code == 200, response.text
        last.update(response.json()["data"])
        return last if last["status"] in TERMINAL else None

    return wait_until(probe, timeout_s, 0.1, what=f"batch {batch_id} to finish",
                      seen=lambda: f"status {last.get('status')!r}, progress {last.get('progress')}")


async def committed_records(bootstrap: str, topic: str, partitions: int, timeout_s: float = 90) -> list[ConsumerRecord]:
    """Every committed record of `topic`, read to the log's end (for audits).

    To the log's end, not to the last stable offset: an open transaction (of a process just
    killed) hides every later commit until the broker aborts it, so an audit reading to the
    last stable offset would miss records that were committed.
    """
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)  # read_uncommitted: the log's end
    await probe.start()
    try:
        ends = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while behind := [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, f"open transactions on {topic} did not end: {behind}"
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


PlacedMessage = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]  # key, value, headers, partition


async def produce_placed(settings: Settings, messages: list[PlacedMessage]) -> None:
    """Write `messages` to the ingest topic as a direct producer would, each on the partition it
    names (whatever its key hashes to), in order; idempotent, acks=all."""
    from topics import service_topics

    topic = service_topics(settings).ingest.name
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value, headers, partition in messages:
            await producer.send(topic, value, key=key, headers=headers, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def committed_outcomes(settings: Settings) -> collections.Counter[tuple[str, int]]:
    """How many committed terminal outcomes each (batchId, index) has on the batch-events topic
    (a record waiting for a reference also reports itself pending, once or more: not counted)."""
    from topics import service_topics

    spec = service_topics(settings).batch_events
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for message in await committed_records(settings.bootstrap_servers, spec.name, spec.partitions):
        event = orjson.loads(message.value)
        if event.get("type") == "records":
            for entry in event["outcomes"]:
                if entry["status"] != "pending":
                    counts[(event["batchId"], entry["index"])] += 1
    return counts


def uploads_until_killed(base: str, headers: dict[str, str], path: str, body_of: Callable[[str], Any],
                         server: ServiceProcess, clients: int = 4, before_kill: int = 8,
                         keyed: bool = False) -> tuple[dict[str, str], list[str]]:
    """`clients` threads upload `body_of(tag)` to `path` one after another until `server` is
    killed (SIGKILL) once `before_kill` uploads were accepted; (tag → batchId of every 202,
    tags whose request died with the server). `keyed`: each upload's tag is its Idempotency-Key."""
    accepted: dict[str, str] = {}
    unanswered: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                tag = f"c{n}-u{i}"
                try:
                    response = http.post(path, json=body_of(tag), headers={"Idempotency-Key": tag} if keyed else {})
                except httpx.TransportError:
                    with lock:
                        unanswered.append(tag)
                    return
                assert response.status_code == 202, response.text
                with lock:
                    accepted[tag] = response.json()["data"]["batchId"]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= before_kill, 120, 0.01, what="some uploads to be accepted")
        server.stop(signal.SIGKILL)  # clients are mid-request: each loops until its request fails
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        server.stop()
    return accepted, unanswered


def upload_body(tag: str, n: int) -> dict[str, Any]:
    """An upload of `n` customers whose external ids name it (`records_per_upload` finds them by it)."""
    return {"resources": [{"id": f"{tag}-r{i}", "name": "n"} for i in range(n)]}


async def records_per_upload(settings: Settings) -> dict[str, dict[str, int]]:
    """Upload tag → {batchId: records} of every committed ingest event, for records whose
    external ids are `<tag>-r<n>` (to the log's end: see `committed_records`)."""
    from schemas.events import decode_ingest_message
    from topics import service_topics

    spec = service_topics(settings).ingest
    found: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for record in await committed_records(settings.bootstrap_servers, spec.name, spec.partitions):
        for event in decode_ingest_message(record.value, record.headers):
            found[event["externalId"].rsplit("-r", 1)[0]][event["batchId"]] += 1
    return {tag: dict(batches) for tag, batches in found.items()}


def ready_generation(worker: ServiceProcess) -> int | None:
    """The group generation in which the worker was last assigned partitions of the ingest topic
    and then finished its recovery; None if its latest assignment is not ready or has none."""
    log = worker.log()
    joined = log.rfind("Joined group")
    assigned = log.find("Setting newly assigned partitions", joined)
    if joined < 0 or assigned < 0 or "Worker ready" not in log[assigned:]:
        return None
    table = log[assigned:log.find("for group", assigned)]
    if ".ingest " not in table:
        return None
    return int(log[joined:].split("(generation ", 1)[1].split(")", 1)[0])
