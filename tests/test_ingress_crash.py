"""An ingress killed with SIGKILL while uploads are in flight: every 202 it gave is in Kafka
and gets processed; every upload it did not answer is in Kafka whole or not at all."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from reach.config import Settings
from schemas.events import decode_ingest_message
from tests.support import (
    SUMMARY,
    ServiceProcess,
    bearer,
    committed_records,
    partner_token,
    tenant_token,
    unique,
    wait_terminal,
    wait_ingress_ready,
    wait_until,
)
from topics import service_topics

SCHEMA = {"name": "Parcel", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "weight": {"type": "integer"}}}}
BATCH_SIZE = 300
CLIENTS = 4


def test_a_killed_ingress_reported_accepted_only_batches_that_are_in_kafka(
        settings: Settings, ingress: TestClient, worker: ServiceProcess, tmp_path: Path) -> None:
    assert ingress.post("/partner/schema-definitions", json=SCHEMA,
                        headers=bearer(partner_token())).status_code == 200
    headers = bearer(tenant_token())
    # Another ingress than the in-process one: its own transactional ids and state folder.
    served = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress")),
                            tmp_path / "ingress.log").start()
    base = wait_ingress_ready(settings)

    accepted: dict[str, str] = {}  # upload tag -> batchId, for every 202
    unanswered: list[str] = []     # upload tags whose request died with the ingress
    lock, stop = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                tag = f"c{n}-u{i}"
                records = [{"id": f"{tag}-r{j}", "weight": j} for j in range(BATCH_SIZE)]
                try:
                    response = http.post("/api/resources/parcel/batch", json={"resources": records})
                except httpx.TransportError:
                    with lock:
                        unanswered.append(tag)
                    return
                assert response.status_code == 202, response.text
                with lock:
                    accepted[tag] = response.json()["data"]["batchId"]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= 12, 120, 0.01, what="some uploads to be accepted")
        served.stop(signal.SIGKILL)  # clients are mid-request: each loops until its request fails
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        served.stop()
    assert unanswered, "no request was in flight when the ingress died; the test proves nothing"

    in_kafka = asyncio.run(_records_per_upload(settings))
    for tag, batch_id in accepted.items():  # a 202 means the whole batch is in Kafka ...
        assert in_kafka.get(tag) == {batch_id: BATCH_SIZE}, (tag, in_kafka.get(tag))
    for tag in unanswered:  # ... and an unanswered upload is in it whole or not at all
        batches = in_kafka.get(tag, {})
        assert not batches or list(batches.values()) == [BATCH_SIZE], (tag, batches)
    assert set(in_kafka) <= set(accepted) | set(unanswered)
    SUMMARY.append(f"ingress killed: {len(accepted)} uploads accepted, {len(unanswered)} unanswered "
                   f"({sum(1 for tag in unanswered if tag in in_kafka)} of them whole in Kafka, the rest absent)")

    for tag, batch_id in accepted.items():  # and the worker processes every accepted record once
        data = wait_terminal(ingress, batch_id, headers, 120)
        progress = data["progress"]
        assert (data["status"], progress["totalRecords"], progress["successfulRecords"],
                progress["failedRecords"]) == ("success", BATCH_SIZE, BATCH_SIZE, 0), data
    last = ingress.get(f"/api/resources/parcel/{next(iter(accepted))}-r{BATCH_SIZE - 1}", headers=headers)
    assert last.json()["data"]["result"]["data"] == {"id": f"{next(iter(accepted))}-r{BATCH_SIZE - 1}",
                                                     "weight": BATCH_SIZE - 1}


async def _records_per_upload(settings: Settings) -> dict[str, dict[str, int]]:
    """Upload tag -> {batchId: records} for every committed event on the ingest topic
    (to the log's end: the killed ingress's open transactions hide later commits for 15 s)."""
    spec = service_topics(settings).ingest
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for record in await committed_records(settings.bootstrap_servers, spec.name, spec.partitions):
        for event in decode_ingest_message(record.value, record.headers):
            found[event["externalId"].rsplit("-r", 1)[0]][event["batchId"]] += 1
    return {tag: dict(batches) for tag, batches in found.items()}
