"""An ingress killed with SIGKILL while uploads are in flight: every 202 it gave is in Kafka
and gets processed; every upload it did not answer is in Kafka whole or not at all."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from starlette.testclient import TestClient

from reach.config import Settings
from tests.support import (
    SUMMARY,
    ServiceProcess,
    bearer,
    partner_token,
    records_per_upload,
    tenant_token,
    unique,
    uploads_until_killed,
    wait_ingress_ready,
    wait_terminal,
)

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

    accepted, unanswered = uploads_until_killed(
        base, headers, "/api/resources/parcel/batch",
        lambda tag: {"resources": [{"id": f"{tag}-r{j}", "weight": j} for j in range(BATCH_SIZE)]}, served,
        clients=CLIENTS, before_kill=12)
    assert unanswered, "no request was in flight when the ingress died; the test proves nothing"

    in_kafka = asyncio.run(records_per_upload(settings))
    for tag, batch_id in accepted.items():  # a 202 means the whole batch is in Kafka ...
        assert in_kafka.get(tag) == {batch_id: BATCH_SIZE}, (tag, in_kafka.get(tag))
    for tag in unanswered:  # ... and an unanswered upload is in it whole or not at all
        batches = in_kafka.get(tag, {})
        assert not batches or list(batches.values()) == [BATCH_SIZE], (tag, batches)
    assert set(in_kafka) <= set(accepted) | set(unanswered)
    SUMMARY.append(f"ingress killed: {len(accepted)} uploads accepted, {len(unanswered)} unanswered "
                   f"({sum(1 for tag in unanswered if tag in in_kafka)} of them whole in Kafka, the rest absent)")

    for batch_id in accepted.values():  # and the worker processes every accepted record once
        data = wait_terminal(ingress, batch_id, headers, 120)
        progress = data["progress"]
        assert (data["status"], progress["totalRecords"], progress["successfulRecords"],
                progress["failedRecords"]) == ("success", BATCH_SIZE, BATCH_SIZE, 0), data
    last = ingress.get(f"/api/resources/parcel/{next(iter(accepted))}-r{BATCH_SIZE - 1}", headers=headers)
    assert last.json()["data"]["result"]["data"] == {"id": f"{next(iter(accepted))}-r{BATCH_SIZE - 1}",
                                                     "weight": BATCH_SIZE - 1}
