"""Per-tenant quotas and backpressure (`ingest.quotas`), as a client sees them: 429 with
Retry-After over a tenant's records rate or batches in flight — counted across two real ingress
processes —, 503 while the workers' backlog is over its bound, the RateLimit fields on every
answer of the batch routes, and nothing enqueued by a refused request."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from reach.config import Quota, Settings
from reach.upload import Tally, retrying
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    bearer,
    define_customer_and_order,
    ingresses,
    partner_token,
    records_per_upload,
    settings_env,
    tenant_token,
    upload_body,
    wait_terminal,
    wait_until,
    wait_worker_ready,
)

UPLOAD = "/api/resources/Customer/batch"


def post(base: str, headers: dict[str, str], payload: Any, method: str = "POST", path: str = UPLOAD) -> httpx.Response:
    return httpx.request(method, f"{base}{path}", json=payload, headers=headers, timeout=30)


def fields(response: httpx.Response) -> tuple[str | None, str | None]:
    return response.headers.get("ratelimit-policy"), response.headers.get("ratelimit")


def test_a_records_quota_holds_across_two_ingresses_and_every_batch_answer_says_where_the_tenant_stands(
        settings: Settings, tmp_path: Path) -> None:
    # 3000 records a minute: a window's worth (3000) at once, then 50 a second.
    limited = replace(settings, quota=Quota(records_per_minute=3000))
    with ingresses(limited, tmp_path, 2) as (a, b):
        define_customer_and_order(a)
        tenant = bearer(tenant_token(tenant="t-seq"))
        first = post(a, {**tenant, "Idempotency-Key": "seq1"}, upload_body("seq1", 1000))
        assert first.status_code == 202, first.text
        assert fields(first) == ('"records";q=3000;qu="records";w=60;reach-burst=3000', '"records";r=2000;t=20'), \
            first.headers

        # The other ingress counts what the first accepted, once it has read it (a GET of the
        # batch there waits for that). Three 1000-record uploads back to back: the window's worth.
        batch_id = first.json()["data"]["batchId"]
        assert httpx.get(f"{b}/api/batches/{batch_id}", headers=tenant, timeout=10).status_code == 200
        second = post(b, tenant, upload_body("seq2", 1000))
        assert second.status_code == 202, second.text
        left = int(re.search(r'"records";r=(\d+);', fields(second)[1] or "").group(1))  # type: ignore[union-attr]
        # 1000 left, plus what refilled (50 a second) since the first.
        assert 1000 <= left <= 1100, f"after 2000 of 3000 records: {fields(second)}"
        third = post(b, tenant, upload_body("seq3", 1000))
        assert third.status_code == 202, third.text
        over = post(b, tenant, upload_body("seq4", 1000))
        assert over.status_code == 429, over.text
        retry_after = int(over.headers["retry-after"])
        assert 17 <= retry_after <= 20, f"1000 records at 50 a second over an empty bucket: Retry-After {retry_after}"
        answer = over.json()
        assert answer["data"]["limit"] == "recordsPerMinute" and answer["data"]["quota"] == 3000, answer
        assert "3000 records per minute" in answer["message"], answer
        assert answer["data"]["available"] < 150 and f"{answer['data']['available']} can be sent now" in \
            answer["message"], answer
        policy, limit = fields(over)
        assert policy is not None and limit is not None, over.headers
        assert limit.startswith(f'"records";r={answer["data"]["available"]};'), over.headers

        # Each tenant has its own quota; a tenant of a partner without overrides has the default.
        assert post(b, bearer(tenant_token(tenant="t-other")), upload_body("other", 1000)).status_code == 202
        # Every answer of the batch routes carries the fields: refusals of other kinds, patches, deletes.
        answers = {
            "400": post(a, tenant, {"resources": []}),
            "404": post(a, tenant, upload_body("x", 1), path="/api/resources/Nope/batch"),
            "PATCH 429": post(b, tenant, upload_body("seq3", 1000), method="PATCH"),
            "DELETE 429": post(a, tenant, {"externalIds": [f"seq1-r{i}" for i in range(1000)]}, method="DELETE"),
        }
        for what, response in answers.items():
            assert what.split()[-1] == str(response.status_code), (what, response.text)
            assert all(fields(response)), (what, response.headers)
        # A retry of an accepted request gets its 202 again, over the quota too.
        replay = post(b, {**tenant, "Idempotency-Key": "seq1"}, upload_body("seq1", 1000))
        assert replay.status_code == 202 and replay.headers.get("idempotent-replayed") == "true", replay.text
        assert replay.json() == first.json()
        # Reads stay served to a tenant over its quota.
        assert httpx.get(f"{b}/api/batches/{batch_id}", headers=tenant, timeout=10).status_code == 200

        # Four clients, two on each ingress, upload 50 records at a time as fast as they are let:
        # together they get the quota once (3000 at once, then 50 a second), not once per ingress.
        race = bearer(tenant_token(tenant="t-race"))
        outcomes: dict[str, int] = {}
        statuses: Counter[tuple[str, int]] = Counter()
        lock, started = threading.Lock(), time.monotonic()

        def client(n: int, base: str) -> None:
            with httpx.Client(base_url=base, headers=race, timeout=30) as http:
                for i in range(100_000):
                    if time.monotonic() - started > 8:
                        return
                    tag = f"race{n}x{i}"
                    response = http.post(UPLOAD, json=upload_body(tag, 50))
                    assert response.status_code in (202, 429), response.text
                    with lock:
                        outcomes[tag] = response.status_code
                        statuses[(base, response.status_code)] += 1
                    if response.status_code == 429:
                        time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(n, (a, b)[n % 2])) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        taken = 50 * sum(1 for status in outcomes.values() if status == 202)
        # The burst, the rate, and what an ingress may give out before it has read what the other
        # just accepted: what the other's two clients got within that time — their requests being
        # published, and those committed and not yet read (a few ms: there is no worker here) —,
        # two each; counted per process it would be 6000 at least.
        most = 3000 + 50 * elapsed + 8 * 50
        assert 3000 <= taken <= most, f"{taken} records taken in {elapsed:.1f} s; quota allows {most:.0f}: {statuses}"
        assert all(statuses[(base, 429)] > 0 for base in (a, b)), statuses

        # What Kafka holds: every 202's records once, nothing of any refused request.
        found = asyncio.run(records_per_upload(limited))
        expected = {tag for tag, status in outcomes.items() if status == 202} | {"seq1", "seq2", "seq3", "other"}
        assert set(found) == expected, (sorted(set(found) - expected)[:5], sorted(expected - set(found))[:5])
        assert all(sum(batches.values()) == (50 if tag.startswith("race") else 1000) and len(batches) == 1
                   for tag, batches in found.items()), found
        print(f"records quota across two ingresses: {taken} records taken in {elapsed:.1f} s "
              f"(quota: 3000 + 50/s = {3000 + 50 * elapsed:.0f}); refused: "
              f"{sum(n for (_, status), n in statuses.items() if status == 429)} requests")


def test_batches_in_flight_are_limited_per_partner_and_free_again_once_the_workers_finish_them(
        settings: Settings, tmp_path: Path) -> None:
    limited = replace(settings, quota_overrides={"partner-b": Quota(batches_in_flight=2)})
    with ingresses(limited, tmp_path, 1) as (base,):
        define_customer_and_order(base)
        httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner_token("partner-b")), timeout=30,
                   json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
        tenant = bearer(tenant_token(partner="partner-b", tenant="t-b"))
        accepted = [post(base, tenant, upload_body(f"b{n}", 10)) for n in range(2)]  # no worker yet: they stay queued
        assert [r.status_code for r in accepted] == [202, 202], [r.text for r in accepted]
        assert fields(accepted[1]) == ('"batches";q=2;qu="concurrent-requests"', '"batches";r=0'), accepted[1].headers
        for attempt in range(3):
            refused = post(base, tenant, upload_body(f"refused{attempt}", 10))
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
            assert refused.json()["data"] == {"limit": "batchesInFlight", "quota": 2, "inFlight": 2,
                                              "retryAfterSeconds": 1}, refused.text
        # partner-a has no quota: no fields, no limit.
        free = post(base, bearer(tenant_token(tenant="t-a")), upload_body("a", 10))
        assert free.status_code == 202 and fields(free) == (None, None), free.headers

        worker = ServiceProcess(["-m", "processors.worker"], limited, tmp_path / "worker.log").start()
        try:
            wait_worker_ready(limited)
            with httpx.Client(base_url=base, timeout=30) as http:
                for response in accepted:
                    wait_terminal(http, response.json()["data"]["batchId"], tenant)
            again = post(base, tenant, upload_body("again", 10))
            assert again.status_code == 202 and fields(again)[1] == '"batches";r=1', again.headers
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
        found = asyncio.run(records_per_upload(limited))
        assert set(found) == {"b0", "b1", "a", "again"}, sorted(found)


def test_uploads_get_503_while_the_backlog_is_over_its_bound_reads_are_served_and_they_resume_by_themselves(
        settings: Settings, tmp_path: Path) -> None:
    limited = replace(settings, max_backlog_records=1500)
    with ingresses(limited, tmp_path, 1) as (base,):
        define_customer_and_order(base)
        tenant = bearer(tenant_token(tenant="t-1"))
        for n in range(2):  # no worker: 2000 records wait
            assert post(base, tenant, upload_body(f"ok{n}", 1000)).status_code == 202
        # The tenth refusal matters as much as the first.
        for n in range(10):
            refused = post(base, tenant, upload_body(f"refused{n}", 10))
            assert refused.status_code == 503, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 30, refused.headers
            assert refused.json()["data"] == {"reason": "backlog", "backlogRecords": 2000,
                                              "maxBacklogRecords": 1500}, refused.text
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        said = ready.json()["data"]
        assert said["uploads"] == "refused" and "REACH_MAX_BACKLOG_RECORDS" in said["reason"], said
        listed = httpx.get(f"{base}/api/batches", headers=tenant, timeout=10)
        assert listed.status_code == 200 and listed.json()["data"]["pagination"]["total"] == 2, listed.text

        worker = ServiceProcess(["-m", "processors.worker"], limited, tmp_path / "worker.log").start()
        try:
            seen: dict[str, Any] = {}

            def accepting() -> bool:
                seen.update(httpx.get(f"{base}/ready", timeout=10).json()["data"])
                return seen["uploads"] == "accepted"

            wait_until(accepting, 120, 0.2, what="the backlog to drain", seen=lambda: seen)
            assert post(base, tenant, upload_body("after", 10)).status_code == 202
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
        found = asyncio.run(records_per_upload(limited))
        assert set(found) == {"ok0", "ok1", "after"}, sorted(found)


def test_reach_upload_waits_out_429s_as_retry_after_says_and_sends_every_record_once(
        settings: Settings, tmp_path: Path) -> None:
    # Paced: 1000 at once, then 1000 a second.
    limited = replace(settings, quota=Quota(records_per_minute=60_000, burst_records=1000))
    with ingresses(limited, tmp_path, 1) as (base,):
        define_customer_and_order(base)
        source = tmp_path / "customers.jsonl"
        source.write_text("".join(f'{{"id": "c{i}", "name": "n"}}\n' for i in range(4000)))
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "reach.cli", "upload", str(source), "--schema", "Customer", "--batch-size", "500",
             "--concurrency", "8", "--no-wait", "--json", "--url", base, "--token", partner_token(),
             "--tenant", "t-upload", "--failed", str(tmp_path / "failed.jsonl")],
            env=settings_env(limited), capture_output=True, text=True, timeout=180)
        elapsed = time.monotonic() - started
        assert run.returncode == 0, (run.stdout, run.stderr[-3000:])
        summary = orjson.loads(run.stdout)
        assert summary["sent"] == 4000 and summary["failed"] == 0, summary
        assert summary["retriesBy"].get("429 recordsPerMinute", 0) >= 1, summary
        assert elapsed >= 2.5, f"4000 records at 1000 a second after a burst of 1000 took only {elapsed:.1f} s"
        found = asyncio.run(records_per_upload(limited))
        assert sum(sum(b.values()) for b in found.values()) == 4000, found
        print(f"reach upload under a quota: 4000 records in {elapsed:.1f} s, retries {summary['retriesBy']}")


def test_a_write_a_little_early_is_held_and_then_accepted_and_concurrent_ones_beyond_a_second_get_429(
        settings: Settings, tmp_path: Path) -> None:
    # A record a millisecond, paced: a burst of one batch.
    limited = replace(settings, quota=Quota(records_per_minute=60_000, burst_records=1000))
    with ingresses(limited, tmp_path, 1) as (base,):
        define_customer_and_order(base)
        tenant = bearer(tenant_token(tenant="t-paced"))
        first = post(base, tenant, upload_body("p0", 1000))  # the allowance: a batch at once
        assert first.status_code == 202, first.text
        assert fields(first) == ('"records";q=60000;qu="records";w=60;reach-burst=1000', '"records";r=0;t=1'), \
            first.headers
        started = time.monotonic()
        held = post(base, tenant, upload_body("p1", 500))  # half a second early
        waited = time.monotonic() - started
        assert held.status_code == 202 and waited >= 0.4, (held.status_code, f"answered after {waited:.2f} s")

        answers: dict[str, httpx.Response] = {}

        def concurrent(tag: str) -> None:
            answers[tag] = post(base, tenant, upload_body(tag, 1000))

        threads = [threading.Thread(target=concurrent, args=(f"c{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        codes = sorted(r.status_code for r in answers.values())
        assert codes.count(202) in (1, 2) and codes.count(429) >= 2, codes  # at most a second ahead is held
        assert all(int(r.headers["retry-after"]) >= 1 for r in answers.values() if r.status_code == 429), answers
        found = asyncio.run(records_per_upload(limited))
        assert set(found) == {"p0", "p1"} | {tag for tag, r in answers.items() if r.status_code == 202}, sorted(found)


def test_the_progress_line_says_why_and_how_long_a_refused_request_waits() -> None:
    answers = iter([
        httpx.Response(429, headers={"Retry-After": "1"},
                       json={"success": False, "message": "Quota exceeded", "data": {"limit": "recordsPerMinute"}}),
        httpx.Response(503, headers={"Retry-After": "1"},
                       json={"success": False, "message": "overloaded", "data": {"reason": "backlog"}}),
        httpx.Response(202, json={"success": True}),
    ])
    tally, shown = Tally(), []

    def handler(request: httpx.Request) -> httpx.Response:
        shown.append(tally.waiting)
        return next(answers)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x") as http:
            return await retrying(http, tally, "POST", "/")

    started = time.monotonic()
    assert asyncio.run(send()).status_code == 202
    assert time.monotonic() - started >= 1.6, "Retry-After: 1 was not waited for, twice"
    assert shown == ["", "retrying (429 recordsPerMinute) in 1s", "retrying (503 backlog) in 1s"], shown
    assert tally.retried == Counter({"429 recordsPerMinute": 1, "503 backlog": 1}) and tally.waiting == ""


def test_quota_settings_are_checked_when_read() -> None:
    with pytest.raises(ValueError, match="REACH_QUOTA_RECORDS_PER_MINUTE must be a whole number"):
        Settings.from_env({"REACH_QUOTA_RECORDS_PER_MINUTE": "0"})
    with pytest.raises(ValueError, match=re.escape("REACH_QUOTA_OVERRIDES['p']: unknown limits ['rpm']")):
        Settings.from_env({"REACH_QUOTA_OVERRIDES": '{"p": {"rpm": 5}}'})
    with pytest.raises(ValueError, match="REACH_QUOTA_BURST_RECORDS must be a whole number"):
        Settings.from_env({"REACH_QUOTA_BURST_RECORDS": "-3"})
    s = Settings.from_env({"REACH_QUOTA_RECORDS_PER_MINUTE": "600", "REACH_QUOTA_BATCHES_IN_FLIGHT": "",
                           "REACH_QUOTA_OVERRIDES": '{"big": {"recordsPerMinute": null, "batchesInFlight": 50}, '
                                                    '"paced": {"recordsPerMinute": 6000, "burstRecords": 1000}}'})
    assert s.quota_for("anyone") == Quota(600, None) and s.quota_for("big") == Quota(None, 50)
    assert s.quota_for("anyone").burst() == 600, "a window's worth at once by default"
    assert s.quota_for("paced") == Quota(6000, None, 1000) and s.quota_for("paced").burst() == 1000
    paced = Settings.from_env({"REACH_QUOTA_RECORDS_PER_MINUTE": "3000", "REACH_QUOTA_BURST_RECORDS": "1000",
                               "REACH_QUOTA_OVERRIDES": '{"p": {"recordsPerMinute": 60}}'})
    assert paced.quota_for("x").burst() == 1000 and paced.quota_for("p") == Quota(60, None, 1000)
