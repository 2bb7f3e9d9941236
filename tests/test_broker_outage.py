"""A 202 is a promise: with the broker gone a real ingress process answers every request that
needs Kafka with 503 in bounded time — the first, the tenth and concurrent ones — never 202, and
accepts again within seconds of the broker's return; nothing accepted before is lost. Reads of
stored resources go on from the readers meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reach.broker import LocalBroker
from schemas.events import decode_ingest_message
from tests.support import (
    ServiceProcess,
    bearer,
    committed_records,
    explained_by,
    free_port,
    isolated_settings,
    partner_token,
    readers,
    settings_env,
    tenant_token,
    wait_ingress_ready,
    wait_terminal,
    wait_until,
)
from topics import create_topics, service_topics

SCHEMA = {"name": "Item", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}}
PRODUCE_TIMEOUT_S = 3.0
BOUND_S = PRODUCE_TIMEOUT_S + 2  # what every answer during the outage must take at most


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A local broker of this test alone, so that stopping it disturbs no other test."""
    broker = LocalBroker(work_dir=tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    yield broker
    broker.stop()


def _timed(client: httpx.Client, method: str, path: str, **kwargs: object) -> tuple[int | str, float]:
    """(status code, or what went wrong, and seconds taken); a hang shows as 'no answer'."""
    started = time.monotonic()
    try:
        code: int | str = client.request(method, path, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.TimeoutException:
        code = "no answer"
    return code, round(time.monotonic() - started, 2)


async def _concurrent_uploads(base: str, headers: dict[str, str], n: int) -> list[tuple[int | str, float]]:
    async with httpx.AsyncClient(base_url=base, timeout=BOUND_S + 20) as client:
        async def one(i: int) -> tuple[int | str, float]:
            started = time.monotonic()
            try:
                response = await client.post("/api/resources/item/batch", json={"resources": [{"id": f"c{i}"}]},
                                             headers=headers)
                code: int | str = response.status_code
            except httpx.TimeoutException:
                code = "no answer"
            return code, round(time.monotonic() - started, 2)
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_every_request_answers_503_in_bounded_time_while_the_broker_is_down_and_202_once_back(
        own_broker: LocalBroker, tmp_path: Path) -> None:
    settings = replace(isolated_settings(own_broker.bootstrap, tmp_path / "data"), produce_timeout_s=PRODUCE_TIMEOUT_S)
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    tenant = bearer(tenant_token())
    stack = contextlib.ExitStack()
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
    try:
        stack.enter_context(readers(settings, tmp_path))
        base = wait_ingress_ready(settings)
        client = httpx.Client(base_url=base, timeout=BOUND_S + 20)
        assert client.post("/partner/schema-definitions", json=SCHEMA,
                           headers=bearer(partner_token())).status_code == 200
        before = client.post("/api/resources/item/batch", json={"resources": [{"id": "a", "n": 1}]}, headers=tenant)
        assert before.status_code == 202, before.text
        before_id = before.json()["data"]["batchId"]
        assert wait_terminal(client, before_id, tenant, 60)["status"] == "success"

        own_broker.stop()
        consecutive = [_timed(client, "POST", "/api/resources/item/batch",
                              json={"resources": [{"id": f"b{i}"}]}, headers=tenant) for i in range(10)]
        concurrent = asyncio.run(_concurrent_uploads(base, tenant, 8))
        others = {
            "define a schema": _timed(client, "POST", "/partner/schema-definitions",
                                      json={**SCHEMA, "name": "Other"}, headers=bearer(partner_token())),
            "list batches": _timed(client, "GET", "/api/batches", headers=tenant),
            "ready": _timed(client, "GET", "/ready"),
            "upload after the rest": _timed(client, "POST", "/api/resources/item/batch",
                                            json={"resources": [{"id": "b-last"}]}, headers=tenant),
        }
        seen = f"consecutive: {consecutive}\nconcurrent: {concurrent}\nothers: {others}\n" \
               f"ingress log:\n{ingress.log()[-3000:]}"
        reads = {
            "list resources": _timed(client, "GET", "/api/resources/item", headers=tenant),
            "read a resource": _timed(client, "GET", "/api/resources/item/a", headers=tenant),
        }
        seen += f"\nreads: {reads}"
        for code, seconds in [*consecutive, *concurrent, *others.values()]:
            assert code == 503 and seconds <= BOUND_S, seen
        # What the readers hold, served without Kafka (after at most its wait for it).
        for code, seconds in reads.values():
            assert code == 200 and seconds <= BOUND_S, seen
        # A batch this ingress already knows still answers from its table.
        assert client.get(f"/api/batches/{before_id}", headers=tenant).status_code == 200

        down_for = time.monotonic()
        own_broker.start()
        restarted = time.monotonic()
        accepted: list[str] = []
        unconfirmed: list[str] = []  # 503s of a commit the broker did not confirm in time: may exist
        after = wait_until(lambda: _accepted(client, tenant, accepted, unconfirmed), 60, 0.5,
                           what="uploads to be accepted again",
                           seen=lambda: f"accepted {accepted}, unconfirmed {unconfirmed}")
        back_in = time.monotonic() - restarted
        assert client.get("/ready").status_code == 200
        with explained_by(worker):
            assert wait_terminal(client, after, tenant, 120)["status"] == "success"
        assert client.get("/api/resources/item/a", headers=tenant).json()["data"]["result"]["data"] == \
            {"id": "a", "n": 1}
        # Refused while the broker was down: never stored, never counted.
        for external_id in [*(f"b{i}" for i in range(10)), *(f"c{i}" for i in range(8)), "b-last"]:
            assert client.get(f"/api/resources/item/{external_id}", headers=tenant).status_code == 404, external_id
        listed = {b["batchId"] for b in client.get("/api/batches?limit=100", headers=tenant).json()["data"]["results"]}
        # The first batch and the accepted retry, and of the unconfirmed ones only those that
        # really committed (each either answers or is unknown, never half there).
        assert {before_id, *accepted} <= listed and listed - {before_id, *accepted} <= set(unconfirmed), \
            (listed, before_id, accepted, unconfirmed)
        for batch_id in unconfirmed:
            status = client.get(f"/api/batches/{batch_id}", headers=tenant).status_code
            assert status == (200 if batch_id in listed else 404), (batch_id, status)
        print(f"outage: 19 uploads answered 503 in {max(s for _, s in [*consecutive, *concurrent]):.2f}s at most; "
              f"202 again {back_in:.1f}s after the broker's restart ({restarted - down_for:.1f}s to start it)")
    finally:
        ingress.stop()
        worker.stop()
        stack.close()


def _accepted(client: httpx.Client, headers: dict[str, str], accepted: list[str], unconfirmed: list[str]) -> str | None:
    response = client.post("/api/resources/item/batch", json={"resources": [{"id": "d", "n": 3}]}, headers=headers)
    if response.status_code != 202:
        assert response.status_code == 503, response.text
        if "may or may not" in response.json()["message"]:
            unconfirmed.append(response.json()["data"]["batchId"])
        return None
    accepted.append(response.json()["data"]["batchId"])
    return accepted[-1]


def test_a_worker_started_while_the_broker_is_down_keeps_trying_and_works_once_it_is_up(
        own_broker: LocalBroker, tmp_path: Path) -> None:
    settings = isolated_settings(own_broker.bootstrap, tmp_path / "data")
    own_broker.stop()
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    try:
        with explained_by(worker):
            # Each failed run ends and the same process (same pid) runs again.
            wait_until(lambda: worker.log().count("starting again") >= 2, 120, 0.2,
                       what="the worker to fail twice and go on trying",
                       seen=lambda: f"{worker.log().count('starting again')} restarts")
            assert worker.proc.poll() is None
            own_broker.start()
            ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
            try:
                with readers(settings, tmp_path):
                    client = httpx.Client(base_url=wait_ingress_ready(settings), timeout=30)
                    tenant = bearer(tenant_token())
                    assert client.post("/partner/schema-definitions", json=SCHEMA,
                                       headers=bearer(partner_token())).status_code == 200
                    response = client.post("/api/resources/item/batch", json={"resources": [{"id": "x", "n": 2}]},
                                           headers=tenant)
                    assert response.status_code == 202, response.text
                    assert wait_terminal(client, response.json()["data"]["batchId"], tenant, 120)["status"] == "success"
                    assert client.get("/api/resources/item/x", headers=tenant).json()["data"]["result"]["data"] == \
                        {"id": "x", "n": 2}
            finally:
                ingress.stop()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_reach_upload_rides_out_an_outage_and_every_batch_lands_once(own_broker: LocalBroker, tmp_path: Path) -> None:
    settings = replace(isolated_settings(own_broker.bootstrap, tmp_path / "data"), produce_timeout_s=PRODUCE_TIMEOUT_S)
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
    upload = None
    try:
        base = wait_ingress_ready(settings)
        assert httpx.post(f"{base}/partner/schema-definitions", json=SCHEMA, headers=bearer(partner_token()),
                          timeout=30).status_code == 200
        source = tmp_path / "items.jsonl"
        source.write_text("".join(f'{{"id": "i{i}", "n": {i}}}\n' for i in range(4000)))

        own_broker.stop()
        upload = subprocess.Popen(
            [sys.executable, "-m", "reach.cli", "upload", str(source), "--schema", "item", "--batch-size", "250",
             "--concurrency", "3", "--no-wait", "--json", "--url", base, "--token", partner_token(),
             "--tenant", "tenant-1", "--failed", str(tmp_path / "failed.jsonl")],
            env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The tenth refusal matters as much as the first: the command keeps going through them.
        wait_until(lambda: _upload_503s(base) >= 10, 120, 0.5, what="ten uploads refused with 503",
                   seen=lambda: _upload_503s(base))
        assert upload.poll() is None, upload.communicate()
        own_broker.start()
        out, err = upload.communicate(timeout=180)
        assert upload.returncode == 0, (out, err[-3000:], ingress.log()[-3000:])
        summary = orjson.loads(out)
        assert summary["sent"] == 4000 and summary["failed"] == 0 and summary["retries"] >= 10, summary

        # Every record is in Kafka once, however many times its batch was sent.
        spec = service_topics(settings).ingest
        seen: Counter[str] = Counter()
        for record in asyncio.run(committed_records(settings.bootstrap_servers, spec.name, spec.partitions)):
            for event in decode_ingest_message(record.value, record.headers):
                seen[event["externalId"]] += 1
        assert len(seen) == 4000 and set(seen.values()) == {1}, seen.most_common(3)
        print(f"reach upload through an outage: {summary['retries']} retries, {len(summary['batches'])} batches, "
              f"each record in Kafka once")
    finally:
        if upload is not None and upload.poll() is None:
            upload.kill()
        ingress.stop()


def _upload_503s(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "reach_http_requests_total" and s.labels.get("status") == "503"
               and s.labels.get("route") == "/api/resources/{schema}/batch")


def test_the_schema_registry_api_answers_through_an_outage_and_registers_once_the_broker_is_back(
        own_broker: LocalBroker, tmp_path: Path) -> None:
    """What a serializer asks at start (its schema's id) is answered from the ingress's view with the
    broker gone; what must reach Kafka (a new registration, the subjects as of now) is 503 with
    Confluent's error code, every time, in bounded time; and works again once the broker is back."""
    from schemas.wire_format import PUBLISHED

    settings = replace(isolated_settings(own_broker.bootstrap, tmp_path / "data"), produce_timeout_s=PRODUCE_TIMEOUT_S)
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    ingest = service_topics(settings).ingest.name
    v1, v2 = PUBLISHED
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
    try:
        base = wait_ingress_ready(settings) + "/schema-registry"
        client = httpx.Client(base_url=base, timeout=BOUND_S + 20)
        held = {"schema": v2.text}
        assert client.post(f"/subjects/{ingest}-value/versions", json=held).json() == {"id": 2}

        own_broker.stop()
        answers = []
        for _ in range(10):
            answers += [
                ("register held", *_timed(client, "POST", f"/subjects/{ingest}-value/versions", json=held), 200),
                ("look up", *_timed(client, "POST", f"/subjects/{ingest}-value", json=held), 200),
                ("by id", *_timed(client, "GET", "/schemas/ids/1"), 200),
                ("latest", *_timed(client, "GET", f"/subjects/{ingest}-value/versions/latest"), 200),
                ("register new", *_timed(client, "POST", f"/subjects/{v1.full_name}/versions",
                                         json={"schema": v1.text}), 503),
                ("subjects", *_timed(client, "GET", "/subjects"), 503),
            ]
        seen = f"{answers}\ningress log:\n{ingress.log()[-3000:]}"
        for _, code, seconds, expected in answers:
            assert code == expected and seconds <= BOUND_S, seen
        refused = client.get("/subjects")
        assert refused.json() == {"error_code": 50002, "message": "Kafka is not reachable; retry later"}, refused.text

        own_broker.start()
        def register_new() -> httpx.Response | None:
            response = client.post(f"/subjects/{v1.full_name}/versions", json={"schema": v1.text})
            return response if response.status_code == 200 else None

        registered = wait_until(register_new, 60, 0.5, what="a registration once the broker is back",
                                seen=lambda: client.post(f"/subjects/{v1.full_name}/versions",
                                                         json={"schema": v1.text}).text)
        assert registered.json() == {"id": 1}
        assert client.get("/subjects").json() == sorted([f"{ingest}-value", v1.full_name])
    finally:
        ingress.stop()
