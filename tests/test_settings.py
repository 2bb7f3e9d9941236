"""Settings survive the trip through the environment: what a test or `reach run` sets for a
process is what that process runs with (`Settings.to_env`, `Settings.from_env`)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from reach.config import Quota, Settings

# Every field away from its default, so that a field `to_env` forgot cannot come back equal.
CHANGED = Settings(
    bootstrap_servers="kafka-1:9092,kafka-2:9092", external_broker=True, broker_nodes=3, local_broker_port=29092,
    topic_prefix="acme",
    topic_partitions=12, replication_factor=3, app_id="acme-worker", data_dir=Path("/var/lib/acme"),
    http_host="0.0.0.0", http_port=9080, worker_web_port=7066, produce_timeout_s=7.5, ingress_id="ingress-7",
    ingress_producers=6, ingress_processes=3, max_body_bytes=1024, batch_retention_days=2.5, sync_wait_s=3.25,
    delete_all_max=500, idempotency_key_hours=12.0, partner_secrets={"p1": "s1", "p2": "s2"},
    quota=Quota(600, 5, 100), quota_overrides={"p1": Quota(60, None, None), "p2": Quota(None, 2, 50)},
    max_backlog_records=100_000, reader_urls=("http://r1:8070", "http://r2:8070"), reader_index=1,
)


def test_every_field_of_the_example_differs_from_its_default() -> None:
    default = Settings(ingress_id="x", ingress_processes=1)
    same = [f.name for f in fields(Settings) if getattr(CHANGED, f.name) == getattr(default, f.name)]
    assert not same, f"CHANGED keeps these at their default, so the round trip would not test them: {same}"


@pytest.mark.parametrize("settings", [CHANGED, Settings(bootstrap_servers="broker:9092", external_broker=True)],
                         ids=["every-field-changed", "defaults"])
def test_settings_round_trip_through_the_environment(settings: Settings) -> None:
    env = settings.to_env()
    assert all(isinstance(value, str) for value in env.values()), env
    assert Settings.from_env(env) == settings


def test_the_local_broker_is_not_named_in_the_environment() -> None:
    local = Settings(ingress_id="x")
    env = local.to_env()
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == ""
    assert Settings.from_env(env) == local


def test_a_local_cluster_of_three_is_three_bootstrap_servers_and_three_replicas() -> None:
    cluster = Settings.from_env({"REACH_BROKER_NODES": "3", "REACH_LOCAL_BROKER_PORT": "29092"})
    assert cluster.bootstrap_servers == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert cluster.replication_factor == 3 and not cluster.external_broker
    assert Settings.from_env(cluster.to_env()) == cluster
    assert Settings(ingress_id="x").with_local_broker(3).bootstrap_servers.count(",") == 2
    with pytest.raises(ValueError, match="REACH_BROKER_NODES must be 1 or 3"):
        Settings.from_env({"REACH_BROKER_NODES": "2"})
