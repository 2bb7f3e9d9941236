"""Creating the declared topics; creating them twice is harmless."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from topics.definitions import TopicSpec


async def create_topics(bootstrap_servers: str, specs: list[TopicSpec]) -> list[str]:
    """Create each topic in `specs` that does not exist yet; return the names created, once
    the broker answers for them (a created topic is not at once in every broker's metadata)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.topic_config())
               for s in missing]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return []  # another process created them between our list and our create
        for topic, code, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"creating topic {topic} failed with Kafka error code {code}")
        await _until_known(admin, [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _until_known(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Wait until the broker describes every topic in `names`, each partition with a leader."""
    async with asyncio.timeout(timeout_s):
        while True:
            described = await admin.describe_topics(names)
            if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                   for t in described):
                return
            await asyncio.sleep(0.05)


async def partitions_of(bootstrap_servers: str, topic: str, timeout_s: float, request_timeout_ms: int) -> set[int]:
    """The partitions of `topic` as the cluster describes it, once each has a leader or after
    `timeout_s` (a topic created moments ago is not at once known to every node of a cluster);
    empty if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms)
    await admin.start()
    try:
        with contextlib.suppress(TimeoutError):
            await _until_known(admin, [topic], timeout_s)
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"] for t in described if t["topic"] == topic and not t["error_code"] for p in t["partitions"]}
