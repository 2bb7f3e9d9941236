"""Every topic the service owns, with its partitions, replication and cleanup policy.

Faust's own internal topics (table changelogs, repartition topics) are declared by Faust;
the topics here are the ones producers, the ingress and the workers share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reach.config import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str = "delete"
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, **self.config}


@dataclass(frozen=True)
class ServiceTopics:
    """The names and shapes of the shared topics for one deployment (one topic prefix)."""

    ingest: TopicSpec
    batch_events: TopicSpec
    resources: TopicSpec
    dependency_requests: TopicSpec
    dependency_notices: TopicSpec
    schema_definitions: TopicSpec
    dead_letters: TopicSpec
    schema_registry: TopicSpec

    def all(self) -> list[TopicSpec]:
        return [self.ingest, self.batch_events, self.resources, self.dependency_requests,
                self.dependency_notices, self.schema_definitions, self.dead_letters, self.schema_registry]


def service_topics(settings: Settings) -> ServiceTopics:
    """The topics of the deployment that `settings` describe."""
    prefix, parts, rf = settings.topic_prefix, settings.topic_partitions, settings.replication_factor
    week_ms = str(7 * 24 * 3600 * 1000)
    return ServiceTopics(
        # Every record of every batch, keyed by partner/tenant/schema/externalId.
        ingest=TopicSpec(f"{prefix}.ingest", parts, rf, "delete", {"retention.ms": week_ms}),
        # Batch registrations (from the ingress) and record outcomes (from the workers),
        # keyed by batchId: what batch status is computed from.
        batch_events=TopicSpec(f"{prefix}.batch-events", parts, rf, "delete",
                               {"retention.ms": str(int(settings.batch_retention_days * 24 * 3600 * 1000))}),
        # The latest state of every resource, as the workers applied it: the read model, and
        # the changelog of the workers' resources table.
        resources=TopicSpec(f"{prefix}.resources", parts, rf, "compact"),
        # "Record R waits for resource T", keyed by T: co-partitioned with the ingest topic,
        # so that the agent applying T's records sees both the wait and T's creation.
        dependency_requests=TopicSpec(f"{prefix}.dependency-requests", parts, rf, "delete", {"retention.ms": week_ms}),
        # "T exists now" for a waiting record, and expiry ticks; keyed by the waiting
        # resource R, co-partitioned with the ingest topic.
        dependency_notices=TopicSpec(f"{prefix}.dependency-notices", parts, rf, "delete", {"retention.ms": week_ms}),
        # The source of truth for schema definitions: latest version per partner/id.
        schema_definitions=TopicSpec(f"{prefix}.schema-definitions", 1, rf, "compact"),
        # Messages the pipeline could not decode or attribute to a batch.
        dead_letters=TopicSpec(f"{prefix}.dead-letters", 1, rf, "delete", {"retention.ms": week_ms}),
        # The Schema Registry API's subjects: which ingest event schema versions each holds.
        schema_registry=TopicSpec(f"{prefix}.schema-registry", 1, rf, "compact"),
    )
