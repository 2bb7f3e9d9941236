"""`Idempotency-Key`: a retried upload is accepted once per key, whichever ingress answers, also
after the ingress that took it was killed between Kafka's commit and its answer — with real
ingress processes and a real worker on the session's broker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import httpx2
from aiokafka import AIOKafkaProducer
from starlette.requests import Request
from starlette.testclient import TestClient

from ingest.idempotency import fingerprint
from ingest.publisher import BatchPublisher
from ingest.uploads import batch_messages
from reach.config import Settings
from schemas.batch_events import INGEST_BATCH, BatchMeta, IdempotencyClaim, claim_event, claim_key
from tests.support import (
    CUSTOMER_SCHEMA,
    SUMMARY,
    Response,
    ServiceProcess,
    bearer,
    ingress_context,
    partner_token,
    records_per_upload,
    tenant_token,
    unique,
    uploads_until_killed,
    wait_ingress_ready,
    wait_terminal,
    wait_until,
)
from topics import service_topics

UPLOAD = "/api/resources/Customer/batch"


def define(client: TestClient) -> None:
    response = client.post("/partner/schema-definitions", headers=bearer(partner_token()),
                           json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
    assert response.status_code == 200, response.text


def post(client: Any, key: str | None, body: dict[str, Any], tenant: str = "tenant-1", method: str = "POST",
         path: str = UPLOAD) -> Response:
    headers = {**bearer(tenant_token(tenant=tenant)), **({"Idempotency-Key": key} if key is not None else {})}
    return client.request(method, path, json=body, headers=headers)


def batches_of(client: TestClient, tenant: str = "tenant-1") -> list[str]:
    response = client.get("/api/batches", params={"limit": "100"}, headers=bearer(tenant_token(tenant=tenant)))
    assert response.status_code == 200, response.text
    return [b["batchId"] for b in response.json()["data"]["results"]]


def test_a_retry_is_answered_with_the_first_202_by_any_ingress_and_enqueues_nothing(
        ingress: TestClient, second_ingress: TestClient, worker: ServiceProcess) -> None:
    define(ingress)
    body = {"resources": [{"id": f"k-{i}", "name": "n"} for i in range(20)]}
    first = post(ingress, "key-1", body)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers, (first.status_code, first.headers)
    batch_id = first.json()["data"]["batchId"]

    for client in (ingress, second_ingress, ingress):
        again = post(client, '"key-1"', body)  # a structured-field string, as the draft writes it
        assert again.status_code == 202, again.text
        assert again.headers.get("Idempotent-Replayed") == "true", again.headers
        assert again.json() == first.json()

    # The same key for another request: 422, whatever differs; nothing is enqueued.
    other = {"resources": [{"id": "k-0", "name": "changed"}]}
    for attempt in (post(ingress, "key-1", other), post(second_ingress, "key-1", body, method="PATCH"),
                    post(ingress, "key-1", body, path=UPLOAD + "?onConflict=reject")):
        assert attempt.status_code == 422 and "Idempotency-Key" in attempt.json()["message"], attempt.text
    # Keys are the tenant's: another tenant's same key is another request.
    elsewhere = post(ingress, "key-1", body, tenant="tenant-2")
    assert elsewhere.status_code == 202 and "Idempotent-Replayed" not in elsewhere.headers
    assert elsewhere.json()["data"]["batchId"] != batch_id
    # Malformed keys.
    for key in ("", "x" * 256, "tab\tinside"):
        bad = post(ingress, key, body)
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"], (key, bad.text)

    assert wait_terminal(ingress, batch_id, bearer(tenant_token()))["progress"]["successfulRecords"] == 20
    assert batches_of(ingress) == [batch_id]
    assert batches_of(second_ingress) == [batch_id]

    # A delete batch takes keys the same way.
    deletes = {"externalIds": ["k-0", "k-1"]}
    deleted = post(ingress, "key-2", deletes, method="DELETE")
    assert deleted.status_code == 202, deleted.text
    replayed = post(second_ingress, "key-2", deletes, method="DELETE")
    assert replayed.status_code == 202 and replayed.headers.get("Idempotent-Replayed") == "true", replayed.text
    assert replayed.json()["data"]["batchId"] == deleted.json()["data"]["batchId"]
    assert len(batches_of(ingress)) == 2


def _request(method: str, path: str) -> Request:
    return Request({"type": "http", "method": method, "path": path, "query_string": b"", "headers": [],
                    "scheme": "http", "server": ("testserver", 80)})


def test_a_key_held_by_an_attempt_in_flight_is_409_until_released(
        settings: Settings, ingress: TestClient) -> None:
    define(ingress)
    body = {"resources": [{"id": "f-1", "name": "n"}]}
    raw = httpx.Request("POST", "http://x", json=body).content
    print_ = fingerprint(_request("POST", UPLOAD), raw)
    # Another ingress claimed the key for this very request and is publishing its batch.
    theirs = IdempotencyClaim("partner-a", "tenant-1", "key-f", print_, "someone-else", int(time.time() * 1000))

    async def produce(value: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(service_topics(settings).batch_events.name, value,
                                         key=claim_key("partner-a", "tenant-1", "key-f"))
        finally:
            await producer.stop()

    asyncio.run(produce(claim_event(theirs)))
    for _ in range(3):
        busy = ingress.post(UPLOAD, content=raw, headers={**bearer(tenant_token()), "Idempotency-Key": "key-f",
                                                          "content-type": "application/json"})
        assert busy.status_code == 409 and busy.headers.get("Retry-After") == "1", busy.text
    other = post(ingress, "key-f", {"resources": [{"id": "f-2", "name": "n"}]})
    assert other.status_code == 422, other.text
    assert batches_of(ingress) == []

    # Its batch was not accepted after all: released, the key is free for the retry.
    asyncio.run(produce(claim_event(theirs, released=True)))
    def accepted() -> httpx2.Response | None:
        r = ingress.post(UPLOAD, content=raw, headers={
            **bearer(tenant_token()), "Idempotency-Key": "key-f", "content-type": "application/json"})
        return r if r.status_code == 202 else None

    retry = wait_until(accepted, 30, what="the released key to be free")
    assert "Idempotent-Replayed" not in retry.headers
    assert batches_of(ingress) == [retry.json()["data"]["batchId"]]


def test_concurrent_attempts_with_one_key_on_two_ingresses_accept_one_batch(
        ingress: TestClient, second_ingress: TestClient) -> None:
    define(ingress)
    body = {"resources": [{"id": f"c-{i}", "name": "n"} for i in range(50)]}
    answers: list[Response] = []
    start = threading.Barrier(6)

    def attempt(client: TestClient) -> None:
        start.wait()
        answers.append(post(client, "key-c", body))

    threads = [threading.Thread(target=attempt, args=(c,)) for c in (ingress, second_ingress) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {202, 409} and statuses[202] >= 1, statuses
    assert len({a.json()["data"]["batchId"] for a in answers if a.status_code == 202}) == 1, [a.text for a in answers]
    def replayed() -> httpx2.Response | None:
        r = ingress.request("POST", UPLOAD, json=body, headers={**bearer(tenant_token()), "Idempotency-Key": "key-c"})
        return r if r.status_code == 202 else None

    final = wait_until(replayed, 30, what="the accepted batch to be replayed")
    assert batches_of(ingress) == batches_of(second_ingress) == [final.json()["data"]["batchId"]]


def test_retries_after_an_ingress_killed_mid_upload_leave_each_batch_in_kafka_once(
        settings: Settings, ingress: TestClient, worker: ServiceProcess, tmp_path: Path) -> None:
    define(ingress)
    served = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress")),
                            tmp_path / "ingress.log").start()
    base = wait_ingress_ready(settings)
    headers = bearer(tenant_token())

    def body(tag: str) -> dict[str, Any]:
        return {"resources": [{"id": f"{tag}-r{j}", "name": tag} for j in range(200)]}

    accepted, unanswered = uploads_until_killed(base, headers, UPLOAD, body, served, keyed=True)
    assert unanswered, "no request was in flight when the ingress died; the test proves nothing"

    # Every upload retried with its key through another ingress, as a client whose answer was
    # lost does: an unanswered one until it is accepted (409 while the killed ingress's claim
    # may still commit), an answered one once more.
    retried: dict[str, Response] = {}
    for tag in [*unanswered, *accepted]:
        def retry() -> Response | None:
            response = ingress.post(UPLOAD, json=body(tag), headers={**headers, "Idempotency-Key": tag})
            assert response.status_code in (202, 409), response.text
            return response if response.status_code == 202 else None
        retried[tag] = wait_until(retry, 90, 1.0, what=f"the retry of {tag} to be accepted")  # type: ignore[assignment]
    for tag, batch_id in accepted.items():
        assert retried[tag].json()["data"]["batchId"] == batch_id
        assert retried[tag].headers.get("Idempotent-Replayed") == "true", tag

    in_kafka = asyncio.run(records_per_upload(settings))
    replayed = 0
    for tag in [*unanswered, *accepted]:
        batch_id = retried[tag].json()["data"]["batchId"]
        assert in_kafka.get(tag) == {batch_id: 200}, (tag, in_kafka.get(tag))  # once, whole
        replayed += retried[tag].headers.get("Idempotent-Replayed") == "true" and tag in unanswered
    SUMMARY.append(f"ingress killed with keys: {len(accepted)} answered, {len(unanswered)} unanswered and retried "
                   f"({replayed} of them found whole in Kafka and replayed); every upload in Kafka once")
    for tag in [*unanswered, *accepted]:
        data = wait_terminal(ingress, retried[tag].json()["data"]["batchId"], headers, 120)
        assert data["progress"]["successfulRecords"] == 200, data


def test_a_batch_committed_by_an_ingress_that_died_before_answering_is_what_the_retry_gets(
        settings: Settings, ingress: TestClient, worker: ServiceProcess) -> None:
    define(ingress)
    definition_id = ingress.get("/partner/schema-definitions/Customer",
                                headers=bearer(partner_token())).json()["data"]["id"]
    definition = ingress_context(ingress).definitions.get("partner-a", definition_id)
    assert definition is not None, definition_id
    records = [{"id": f"d-r{i}", "name": "n"} for i in range(30)]
    raw = httpx.Request("POST", "http://x", json={"resources": records}).content
    # What an ingress does up to Kafka's commit, exactly (claim, then the batch in one
    # transaction, its registration carrying the claim) — and then it dies: no answer.
    claim = IdempotencyClaim("partner-a", "tenant-1", "key-d", fingerprint(_request("POST", UPLOAD), raw),
                             "the-dead-ingress", int(time.time() * 1000))
    meta = BatchMeta(str(uuid.uuid4()), "partner-a", "tenant-1", definition_id, len(records),
                     int(time.time() * 1000), INGEST_BATCH)
    dead = replace(settings, ingress_id=unique("dead-ingress"))

    async def accept_then_die() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(service_topics(settings).batch_events.name, claim_event(claim),
                                         key=claim_key("partner-a", "tenant-1", "key-d"))
        finally:
            await producer.stop()
        publisher = BatchPublisher(dead)
        await publisher.start()
        try:
            await publisher.publish(batch_messages(service_topics(settings), meta, definition,
                                                   [(r["id"], r) for r in records], "upsert", claim=claim))
        finally:
            await publisher.stop()

    asyncio.run(accept_then_die())
    retry = ingress.post(UPLOAD, content=raw, headers={**bearer(tenant_token()), "Idempotency-Key": "key-d",
                                                       "content-type": "application/json"})
    assert retry.status_code == 202 and retry.headers.get("Idempotent-Replayed") == "true", retry.text
    assert retry.json()["data"]["batchId"] == meta.batchId
    assert wait_terminal(ingress, meta.batchId, bearer(tenant_token()))["progress"]["successfulRecords"] == 30
    assert batches_of(ingress) == [meta.batchId]
    assert asyncio.run(records_per_upload(settings)) == {"d": {meta.batchId: 30}}
