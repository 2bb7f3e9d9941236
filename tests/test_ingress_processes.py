"""`reach ingress` with several processes on one port: each serves, reads what the others
accepted, is started again when it dies, and all stop with their supervisor."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from reach.config import Settings
from tests.support import (
    ServiceProcess,
    alive,
    bearer,
    children_of,
    partner_token,
    tenant_token,
    unique,
    wait_ingress_ready,
    wait_terminal,
    wait_until,
)

SCHEMA = {"name": "Crate", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}}


def _upload(base: str, tag: str, headers: dict[str, str]) -> str:
    """One upload on a new connection (any process may take it); its batchId."""
    records = [{"id": f"{tag}-{i}", "n": i} for i in range(50)]
    response = httpx.post(f"{base}/api/resources/crate/batch", json={"resources": records}, headers=headers,
                          timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["data"]["batchId"]


def test_processes_share_the_port_and_each_serves_alone_while_another_restarts(
        settings: Settings, ingress: TestClient, worker: ServiceProcess, tmp_path: Path) -> None:
    assert ingress.post("/partner/schema-definitions", json=SCHEMA, headers=bearer(partner_token())).status_code == 200
    headers = bearer(tenant_token())
    supervisor = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_id=unique("ingress"),
                                                                 ingress_processes=2),
                                tmp_path / "ingress.log").start()
    try:
        base = wait_ingress_ready(settings)
        wait_until(lambda: len(children_of(supervisor.proc.pid)) == 2, 60, what="two ingress processes")
        batches = [_upload(base, f"both-{n}", headers) for n in range(10)]
        first, second = children_of(supervisor.proc.pid)
        for pid in (first, second):
            # One process killed: the other alone answers every request meanwhile, including the
            # status of batches the killed one accepted (each reads the batch events itself).
            # First the original second process serves alone, then the first one's replacement.
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 10, what=f"process {pid} to die")
            batches += [_upload(base, f"alone-{pid}-{n}", headers) for n in range(10)]
            for batch_id in batches:
                status = httpx.get(f"{base}/api/batches/{batch_id}", headers=headers, timeout=30)
                assert status.status_code == 200, (batch_id, status.text)
            wait_until(lambda: len(children_of(supervisor.proc.pid)) == 2, 60, what="the killed process to be replaced")
            wait_ingress_ready(settings)
        for batch_id in batches:
            data = wait_terminal(ingress, batch_id, headers)
            assert data["status"] == "success", data
        assert {p.name for p in (settings.data_dir / "ingress").iterdir()} >= {
            f"{supervisor.settings.ingress_id}-0", f"{supervisor.settings.ingress_id}-1"}
    finally:
        children = children_of(supervisor.proc.pid)
        code = supervisor.stop()
    assert code == 0, supervisor.log()[-3000:]
    assert not any(alive(pid) for pid in children), "a child outlived its supervisor's SIGTERM"


def test_children_stop_when_their_supervisor_is_killed(settings: Settings, tmp_path: Path) -> None:
    supervisor = ServiceProcess(["-m", "ingest.server"], replace(settings, ingress_processes=2),
                                tmp_path / "ingress.log").start()
    try:
        wait_ingress_ready(settings)
        wait_until(lambda: len(children_of(supervisor.proc.pid)) == 2, 60, what="two ingress processes")
        children = children_of(supervisor.proc.pid)
    finally:
        supervisor.stop(signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in children), 30,
               what=f"the children {children} to stop after their supervisor was killed")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{settings.http_port}/health", timeout=5)
