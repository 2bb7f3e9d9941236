"""Topics are declared in one place and created explicitly; creating them twice is harmless."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from reach.config import Settings
from tests.support import unique
from topics import create_topics, service_topics


def test_create_topics_twice_creates_each_once_with_declared_shape(settings: Settings) -> None:
    fresh = replace(settings, topic_prefix=unique("fresh"))
    specs = service_topics(fresh).all()

    async def scenario() -> tuple[list[str], list[str], dict[str, int], dict[str, str]]:
        first = await create_topics(fresh.bootstrap_servers, specs)
        second = await create_topics(fresh.bootstrap_servers, specs)
        admin = AIOKafkaAdminClient(bootstrap_servers=fresh.bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics([s.name for s in specs])
            partitions = {t["topic"]: len(t["partitions"]) for t in described}
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs])
            policies = {}
            for response in configs:
                for resource in response.resources:
                    name, entries = resource[3], resource[4]
                    policies[name] = next(e[1] for e in entries if e[0] == "cleanup.policy")
        finally:
            await admin.close()
        return first, second, partitions, policies

    first, second, partitions, policies = asyncio.run(scenario())
    assert sorted(first) == sorted(s.name for s in specs)
    assert second == []
    assert partitions == {s.name: s.partitions for s in specs}
    assert policies == {s.name: s.cleanup_policy for s in specs}
    assert service_topics(fresh).schema_definitions.cleanup_policy == "compact"
