"""`reach broker` runs a local Kafka of three nodes, and stops and starts its nodes one by one.

A real cluster from the project's own jars: replication factor 3 and `min.insync.replicas=2`
for Kafka's internal topics and by default for new ones, so writes go on with one node down.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from reach.config import local_bootstrap
from tests.support import free_port_block


def _reach_broker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reach.cli", "broker", *args], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}  # the local one, not the session's
    env.update(REACH_DATA_DIR=str(tmp_path / "data"), REACH_LOCAL_BROKER_PORT=str(free_port_block(6)))
    try:
        yield env
    finally:
        _reach_broker(env, "stop", "--nodes", "3")


async def _write_and_read(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(60):
            while len(seen) < len(values):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    seen.extend(m.value for m in messages)
        return seen
    finally:
        await consumer.stop()


async def _replicas_and_min_isr(bootstrap: str, topic: str) -> tuple[int, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 3)])
        # The node that answers may not know the new topic's partition yet (its metadata comes
        # from the controller moments after the creation returns): ask until it does.
        deadline = asyncio.get_running_loop().time() + 30
        while not (described := await admin.describe_topics([topic]))[0]["partitions"]:
            assert asyncio.get_running_loop().time() < deadline, f"{topic} has no partition after 30 s: {described}"
            await asyncio.sleep(0.1)
        replicas = len(described[0]["partitions"][0]["replicas"])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
        entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        return replicas, entries["min.insync.replicas"]
    finally:
        await admin.close()


def test_a_three_node_cluster_keeps_writing_with_a_node_down_and_takes_it_back(cluster_env: dict[str, str]) -> None:
    started = _reach_broker(cluster_env, "start", "--nodes", "3")
    assert started.returncode == 0, started.stderr[-3000:]
    bootstrap = local_bootstrap(3, int(cluster_env["REACH_LOCAL_BROKER_PORT"]))
    assert bootstrap in started.stdout, started.stdout

    env3 = {**cluster_env, "REACH_BROKER_NODES": "3"}
    status = _reach_broker(env3, "status")
    lines = status.stdout.splitlines()
    assert status.returncode == 0 and len(lines) == 3, status.stdout
    for node, (line, address) in enumerate(zip(lines, bootstrap.split(",")), start=1):
        assert line.startswith(f"node {node} {address} pid "), lines

    replicas, min_isr = asyncio.run(_replicas_and_min_isr(bootstrap, "three-copies"))
    assert (replicas, min_isr) == (3, "2")
    assert asyncio.run(_write_and_read(bootstrap, "three-copies", [b"a", b"b"])) == [b"a", b"b"]

    stopped = _reach_broker(env3, "stop", "--node", "2")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    status = _reach_broker(env3, "status")
    assert status.returncode == 1 and status.stdout.splitlines()[1].endswith(" down"), status.stdout
    # Two of three in sync: acks=all writes go on.
    assert asyncio.run(_write_and_read(bootstrap, "three-copies", [b"c"]))[-1:] == [b"c"]

    again = _reach_broker(env3, "start", "--node", "2")
    assert again.returncode == 0 and "node 2 started" in again.stdout, (again.stdout, again.stderr[-3000:])
    status = _reach_broker(env3, "status")
    assert status.returncode == 0 and all(" pid " in line for line in status.stdout.splitlines()), status.stdout

    assert _reach_broker(env3, "stop").returncode == 0
    assert all(line.endswith(" down") for line in _reach_broker(env3, "status").stdout.splitlines())
