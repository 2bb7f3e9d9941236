"""One Kafka broker per test session, chosen in this order:

1. `KAFKA_BOOTSTRAP_SERVERS`, when set;
2. a testcontainers Kafka container, when a Docker engine answers;
3. a local broker from Maven Central jars, started here (see `reach/broker.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from ingest.app import create_app

from reach.config import Settings
from tests.support import (SUMMARY, ServiceProcess, free_port, isolated_settings, readers, unique,
                           wait_worker_ready)
from topics import create_topics, service_topics

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per test request is noise

# Hypothesis's wall-clock checks (a 200 ms deadline per example, "input generation is slow")
# fail on a loaded, shared machine, not on our code: property tests here check results only.
# A run of test_merge_properties.py beside the broker and worker processes of other tests failed
# "only generated 1 valid inputs after 1.56 seconds".
hypothesis_settings.register_profile("shared-machine", deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("shared-machine")


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap servers of the session's broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from reach.broker import LocalBroker

    port = free_port()
    broker = LocalBroker(work_dir=tmp_path_factory.mktemp("kafka"), port=port, controller_port=free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings of this test alone (own topics, group and data folder), topics created."""
    s = isolated_settings(kafka_bootstrap, tmp_path / "data")
    asyncio.run(create_topics(s.bootstrap_servers, service_topics(s).all()))
    return s


@pytest.fixture(scope="module")
def module_ingress(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One in-process ingress with its readers and topics for a whole test module: for modules
    whose tests change nothing that another of them reads (a reader process and a deployment's
    topics take seconds to start, the requests of such a test milliseconds)."""
    tmp = tmp_path_factory.mktemp("module")
    s = isolated_settings(kafka_bootstrap, tmp / "data")
    asyncio.run(create_topics(s.bootstrap_servers, service_topics(s).all()))
    with readers(s, tmp), TestClient(create_app(s)) as client:
        yield client


@pytest.fixture
def reader(settings: Settings, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """The reader processes of this test's deployment (`state.reader`), answering."""
    with readers(settings, tmp_path) as processes:
        yield processes


@pytest.fixture
def ingress(settings: Settings, reader: list[ServiceProcess]) -> Iterator[TestClient]:
    """An in-process ingress of this test's deployment, its Kafka clients started, with its readers."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def second_ingress(settings: Settings, reader: list[ServiceProcess]) -> Iterator[TestClient]:
    """Another ingress instance of the same deployment (same topics), e.g. for read-your-writes."""
    with TestClient(create_app(replace(settings, ingress_id=unique("ingress")))) as client:
        yield client


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    """One real worker process of this test's deployment, its web server answering."""
    process = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "worker.log").start()
    try:
        wait_worker_ready(settings)
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"worker exited with {code}:\n{process.log()[-3000:]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the figures tests collected (fuzz cases, faults injected) after the results."""
    for line in SUMMARY:
        terminalreporter.write_line(line)
