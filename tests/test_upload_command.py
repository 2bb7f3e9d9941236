"""`reach upload`, run as a user runs it, against a real ingress process and worker: a file of
25,000 records with bad lines loads the good ones, reports every bad one in failed.jsonl, and
the fixed failures load when fed back in; CSV cells are typed; an ingress that is not up yet
is waited for."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from reach.config import Settings
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    bearer,
    partner_token,
    settings_env,
    tenant_token,
    unique,
    wait_ingress_ready,
)


def reach_upload(settings: Settings, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reach.cli", "upload", *args,
                           "--url", f"http://127.0.0.1:{settings.http_port}", "--token", partner_token(),
                           "--tenant", "tenant-1"],
                          env=settings_env(settings), capture_output=True, text=True, timeout=timeout_s)


def start_ingress(settings: Settings, tmp_path: Path) -> ServiceProcess:
    return ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress")),
                          tmp_path / "ingress.log").start()


@pytest.fixture
def base(settings: Settings, tmp_path: Path, reader: object) -> Iterator[str]:
    process = start_ingress(settings, tmp_path)
    try:
        url = wait_ingress_ready(settings)
        response = httpx.post(f"{url}/partner/schema-definitions", headers=bearer(partner_token()), timeout=30,
                              json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
        assert response.status_code == 200, response.text
        yield url
    finally:
        process.stop()


def stored(base: str) -> int:
    response = httpx.get(f"{base}/api/resources/Customer", params={"limit": "1"}, headers=bearer(tenant_token()),
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]["pagination"]["total"]


def test_a_file_with_bad_lines_loads_the_rest_and_reports_each_failure(
        settings: Settings, base: str, worker: ServiceProcess, tmp_path: Path) -> None:
    lines: list[bytes] = []
    expected: dict[int, str] = {}  # line number -> code
    for i in range(25_000):
        line = len(lines) + 1
        if i % 5000 == 17:
            lines.append(b'{"id": "broken", ')  # not JSON
            expected[line] = "INVALID_JSON"
        elif i % 5000 == 29:
            lines.append(b'["an", "array"]')  # not an object
            expected[line] = "NOT_AN_OBJECT"
        elif i % 3000 == 41:
            lines.append(orjson.dumps({"id": f"u-{i}", "name": "x", "age": "old"}))  # refused by the ingress
            expected[line] = "VALIDATION_FAILED"
        elif i % 4000 == 53:
            lines.append(orjson.dumps({"id": f"u-{i}", "age": 3}))  # no name: fails in the worker
            expected[line] = "VALIDATION_FAILED"
        else:
            lines.append(orjson.dumps({"id": f"u-{i}", "name": f"n{i}", "age": i % 90}))
    source = tmp_path / "customers.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed.jsonl"

    started = time.monotonic()
    run = reach_upload(settings, str(source), "--schema", "Customer", "--json", "--failed", str(failed))
    seconds = time.monotonic() - started
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr[-3000:])
    summary = orjson.loads(run.stdout)
    good = 25_000 - len(expected)
    assert (summary["records"], summary["applied"], summary["failed"], summary["pending"]) == (
        25_000, good, len(expected), 0), summary
    assert summary["failedByCode"] == {"INVALID_JSON": 5, "NOT_AN_OBJECT": 5, "VALIDATION_FAILED": 9 + 7}, summary
    assert len(summary["batches"]) >= 25, summary["batches"]
    reported = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
    assert {r["line"]: r["code"] for r in reported} == expected
    assert all(r["message"] for r in reported), reported[:3]
    assert stored(base) == good
    print(f"reach upload: 25,000 records in {seconds:.1f} s ({summary['seconds']} s inside)")

    # Fixed failures fed back in: the records that only lacked a good name or age.
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_bytes(b"".join(
        orjson.dumps({**r, "record": {**r["record"], "name": "fixed", "age": 1}}) + b"\n"
        for r in reported if r["code"] == "VALIDATION_FAILED"))
    again = reach_upload(settings, str(fixed), "--schema", "Customer", "--json", "--failed", str(tmp_path / "f2"))
    assert again.returncode == 0, (again.stdout, again.stderr[-2000:])
    assert orjson.loads(again.stdout)["applied"] == 16
    assert stored(base) == good + 16


def test_csv_cells_are_typed_by_the_schema_and_an_ingress_not_up_yet_is_waited_for(
        settings: Settings, ingress: TestClient, worker: ServiceProcess, tmp_path: Path) -> None:
    # Defined through another ingress: the one the command uploads to is not up yet.
    response = ingress.post("/partner/schema-definitions", headers=bearer(partner_token()),
                            json={"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
    assert response.status_code == 200, response.text
    source = tmp_path / "customers.csv"
    source.write_text('id,name,age,tags,address\n'
                      'c-1,Ann,41,"[""a"", ""b""]","{""city"": ""Oslo""}"\n'
                      'c-2,Bob,,,\n'
                      'c-3,Cid,forty,,\n', encoding="utf-8")
    # The ingress is not up yet: the command retries until it is, then loads the file. Its first
    # request finds a port that drops the connection, so it must retry however fast the
    # ingress starts after.
    not_up = socket.create_server(("127.0.0.1", settings.http_port))
    not_up.settimeout(60)
    command = subprocess.Popen([sys.executable, "-m", "reach.cli", "upload", str(source), "--schema", "Customer",
                                "--json", "--failed", str(tmp_path / "failed.jsonl"),
                                "--url", f"http://127.0.0.1:{settings.http_port}", "--token", partner_token(),
                                "--tenant", "tenant-1"],
                               env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with not_up:
        connection, _ = not_up.accept()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, no TIME_WAIT
        connection.close()
    process = start_ingress(settings, tmp_path)
    try:
        base = wait_ingress_ready(settings)
        out, err = command.communicate(timeout=120)
        assert command.returncode == 1, (out, err[-2000:])
        summary = orjson.loads(out)
        assert (summary["applied"], summary["failedByCode"]) == (2, {"INVALID_VALUE": 1}), summary
        assert summary["retries"] >= 1, "the ingress answered at once: the test shows no waiting"
        first = httpx.get(f"{base}/api/resources/Customer/c-1", headers=bearer(tenant_token()), timeout=30)
        assert first.json()["data"]["result"]["data"] == {"id": "c-1", "name": "Ann", "age": 41, "tags": ["a", "b"],
                                                          "address": {"city": "Oslo"}}
        second = httpx.get(f"{base}/api/resources/Customer/c-2", headers=bearer(tenant_token()), timeout=30)
        assert second.json()["data"]["result"]["data"] == {"id": "c-2", "name": "Bob"}
    finally:
        process.stop()
