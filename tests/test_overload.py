"""Overload for minutes: clients that push past their tenants' quotas and past the workers'
backlog bound, on two ingress processes and a worker. Every 202'd record is applied exactly once,
every 429 or 503 enqueued nothing, and uploads resume by themselves as the backlog drains.

`REACH_OVERLOAD_TEST_S` sets how long the clients push (default 120 s)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx

from reach.config import Quota, Settings
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    bearer,
    committed_outcomes,
    explained_by,
    ingresses,
    partner_token,
    records_per_upload,
    tenant_token,
    upload_body,
    wait_until,
    wait_worker_ready,
)

UPLOAD = "/api/resources/Customer/batch"
PUSH_S = float(os.environ.get("REACH_OVERLOAD_TEST_S", "120"))
BACKLOG_BOUND = 4000


def test_pushed_past_quotas_and_the_backlog_bound_for_minutes_every_202_is_applied_once_and_no_refusal_enqueues(
        settings: Settings, tmp_path: Path) -> None:
    # partner-a's tenants: 12,000 records a minute each (a minute's worth at once, then 200 a second);
    # partner-b's bulk tenant has no quota: it is what pushes the backlog past its bound.
    limited = replace(settings, quota=Quota(records_per_minute=12_000),
                      quota_overrides={"partner-b": Quota()}, max_backlog_records=BACKLOG_BOUND)
    worker = ServiceProcess(["-m", "processors.worker"], limited, tmp_path / "worker.log").start()
    try:
        _push_and_audit(limited, tmp_path, worker)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def _push_and_audit(limited: Settings, tmp_path: Path, worker: ServiceProcess) -> None:
    with ingresses(limited, tmp_path, 2) as bases, explained_by(worker):
        wait_worker_ready(limited)
        for partner in ("partner-a", "partner-b"):
            response = httpx.post(f"{bases[0]}/partner/schema-definitions", headers=bearer(partner_token(partner)),
                                  json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA},
                                  timeout=30)
            assert response.status_code == 200, response.text
        tenants = {"quota-1": ("partner-a", 200), "quota-2": ("partner-a", 200), "bulk": ("partner-b", 1000)}
        answers: dict[str, tuple[str, int, str | None, float]] = {}  # tag -> (tenant, status, batchId, when)
        lock, started = threading.Lock(), time.monotonic()

        def client(tenant: str, n: int) -> None:
            partner, size = tenants[tenant]
            headers = bearer(tenant_token(partner=partner, tenant=tenant))
            with httpx.Client(base_url=bases[n % 2], headers=headers, timeout=60) as http:
                for i in range(1_000_000):
                    if time.monotonic() - started > PUSH_S:
                        return
                    tag = f"{tenant}x{n}x{i}"
                    response = http.post(UPLOAD, json=upload_body(tag, size))
                    assert response.status_code in (202, 429, 503), response.text
                    assert response.status_code == 202 or "retry-after" in response.headers, response.headers
                    batch_id = response.json()["data"]["batchId"] if response.status_code == 202 else None
                    with lock:
                        answers[tag] = (tenant, response.status_code, batch_id, time.monotonic() - started)
                    if response.status_code != 202:
                        time.sleep(0.05)  # an impatient client: far sooner than Retry-After says

        threads = [threading.Thread(target=client, args=(tenant, n)) for tenant in tenants for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PUSH_S + 120)
        assert not any(thread.is_alive() for thread in threads), "a client is stuck"
        statuses = Counter(status for _, status, _, _ in answers.values())
        by_tenant = Counter((tenant, status) for tenant, status, _, _ in answers.values())
        assert statuses[429] >= 10 and statuses[503] >= 10, f"not pushed past both limits: {by_tenant}"
        # Uploads resumed by themselves: 202s in the last quarter of the run, for every tenant.
        late = {tenant for tenant, status, _, when in answers.values() if status == 202 and when > PUSH_S * 0.75}
        assert late == set(tenants), f"no upload accepted late in the run for {set(tenants) - late}: {by_tenant}"

        accepted = {tag: batch_id for tag, (_, status, batch_id, _) in answers.items() if status == 202}
        size_of = {tag: tenants[tenant][1] for tag, (tenant, _, _, _) in answers.items()}
        total = sum(size_of[tag] for tag in accepted)
        seen: dict[str, object] = {}

        def drained() -> bool:
            seen.update(httpx.get(f"{bases[0]}/ready", timeout=10).json()["data"])
            return seen["backlogRecords"] == 0

        wait_until(drained, 300, 0.5, what=f"the workers to apply {total} records", seen=lambda: seen)

        # Kafka holds every 202's records once, in its batch, and nothing of any refused request.
        found = asyncio.run(records_per_upload(limited))
        assert set(found) == set(accepted), (f"refused yet enqueued: {sorted(set(found) - set(accepted))[:5]}; "
                                             f"accepted yet missing: {sorted(set(accepted) - set(found))[:5]}")
        wrong = {tag: batches for tag, batches in found.items() if batches != {accepted[tag]: size_of[tag]}}
        assert not wrong, f"{len(wrong)} uploads not enqueued exactly once in their batch: {list(wrong.items())[:3]}"
        # The worker applied each of them exactly once: one committed outcome per record.
        outcomes = asyncio.run(committed_outcomes(limited))
        expected = {(batch_id, i) for tag, batch_id in accepted.items() for i in range(size_of[tag])}
        assert set(outcomes) == expected, (len(set(outcomes) - expected), len(expected - set(outcomes)))
        twice = {k: n for k, n in outcomes.items() if n != 1}
        assert not twice, f"{len(twice)} records have more than one outcome: {list(twice.items())[:3]}"
        print(f"overload for {PUSH_S:.0f} s: {statuses[202]} uploads accepted ({total:,} records, each applied once), "
              f"{statuses[429]} refused 429, {statuses[503]} refused 503 (nothing of them enqueued); "
              f"by tenant {dict(sorted(by_tenant.items()))}")
