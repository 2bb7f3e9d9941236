"""One Kafka broker per test session, chosen in this order:

1. `KAFKA_BOOTSTRAP_SERVERS`, when set;
2. a testcontainers Kafka container, when a Docker engine answers;
3. a local broker from Maven Central jars, started here (see `reach/broker.py`).

Under `pytest -n N` (pytest-xdist) the controller starts the local broker of 3. once, before its
N processes, which share it through 1.; every test has topics, groups and folders of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from ingest.app import create_app
from reach.config import Settings
from tests.support import SUMMARY, ServiceProcess, free_port, isolated_settings, readers, unique, wait_worker_ready
from topics import create_topics, service_topics

_BROKER = pytest.StashKey[Any]()  # the broker the controller of `pytest -n` started
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


_SUMMARY_PROPERTY = "reach_summary"
_COLLECTED: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test's figures travel with its report, so that they reach the terminal also from the
    processes of `pytest -n` (pytest-xdist)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "teardown" and SUMMARY:
        report.user_properties.append((_SUMMARY_PROPERTY, list(SUMMARY)))
        SUMMARY.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == _SUMMARY_PROPERTY:
            _COLLECTED.extend(cast(list[str], value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the figures tests collected (fuzz cases, faults injected) after the results."""
    for line in _COLLECTED:
        terminalreporter.write_line(line)


_PROCESS_FIXTURES = {"worker", "reader", "ingress", "second_ingress", "module_ingress"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from what it uses: `processes` (starts the service's or a
    broker's processes), `broker` (talks to the session's broker), else `unit`."""
    for item in items:
        module = vars(getattr(item, "module", None) or object)
        names = set(getattr(item, "fixturenames", ()))
        if names & _PROCESS_FIXTURES or "ServiceProcess" in module or "LocalBroker" in module:
            item.add_marker(pytest.mark.processes)
        elif "kafka_bootstrap" in names:
            item.add_marker(pytest.mark.broker)
        else:
            item.add_marker(pytest.mark.unit)


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N`, one broker for all N processes: the controller starts it before the
    processes start, and they find it in KAFKA_BOOTSTRAP_SERVERS (`kafka_bootstrap`)."""
    if not _xdist_controller(config) or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return
    if _docker_engine_answers():
        return  # each process starts its own container
    from reach.broker import LocalBroker

    broker = LocalBroker(work_dir=Path(tempfile.mkdtemp(prefix="reach-tests-kafka-")), port=free_port(),
                         controller_port=free_port())
    broker.start()
    config.stash[_BROKER] = broker
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_BROKER, None)
    if broker is not None:
        broker.stop()
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        shutil.rmtree(broker.work_dir, ignore_errors=True)
