"""The whole service starts with one command and stops cleanly; the ingress reports readiness."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import httpx

from ingest.kafka import KafkaGateway
from reach.config import Settings
from tests.support import ServiceProcess, free_port, wait_until


def test_reach_run_starts_worker_and_ingress_and_stops_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    service = ServiceProcess(["-m", "reach.cli", "run"], settings, tmp_path / "run.log").start()
    base = f"http://127.0.0.1:{settings.http_port}"
    try:
        health = wait_until(lambda: httpx.get(f"{base}/health", timeout=2), 60, what="/health")
        assert health.status_code == 200 and health.json()["success"] is True
        ready = wait_until(lambda: httpx.get(f"{base}/ready", timeout=5), 30, what="/ready")
        assert ready.status_code == 200 and ready.json()["data"]["status"] == "ready"
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{settings.worker_web_port}/state/resources",
                                     params={"key": "x"}, timeout=2).status_code == 200,
                   60, what="the worker's web server")
    finally:
        code = service.stop(signal.SIGTERM, timeout_s=60)
    log = service.log()
    assert code == 0, log[-3000:]
    assert "reach: stopped" in log
    # Nothing of the service is left listening.
    assert not _listening(settings.http_port) and not _listening(settings.worker_web_port)


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        return True
    except httpx.TransportError:
        return False


def test_ready_is_false_when_no_broker_answers() -> None:
    dead = replace(Settings(), bootstrap_servers=f"127.0.0.1:{free_port()}")
    assert asyncio.run(KafkaGateway(dead).ready()) is False


def test_ready_is_true_against_the_real_broker(kafka_bootstrap: str) -> None:
    live = replace(Settings(), bootstrap_servers=kafka_bootstrap)
    assert asyncio.run(KafkaGateway(live).ready()) is True
