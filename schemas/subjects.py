"""The Schema Registry API's subjects, folded from their compacted topic.

A subject holds published versions of the ingest event schema (`schemas.wire_format`) as its
versions 1, 2, … in the order they were registered. Every ingress folds the same one-partition
log, so every ingress answers the same versions (schema ids are fixed, they need no log).

The subjects that may hold anything are the ones a stock serializer derives for the ingest
topic: `<topic>-value` (TopicNameStrategy, every published version; the ingress registers them
all at start, oldest first), `<topic>-<full name>` (TopicRecordNameStrategy) and `<full name>`
(RecordNameStrategy), each of the latter for its one published version. So the state is a few
subjects of a few versions, whatever the data: it is kept in memory and the topic is read from
its beginning at start (milliseconds).

A registration is a record keyed by (subject, version, id). The first record in log order to
take a version of a subject wins, in every process alike; a writer whose record lost writes a
tombstone for its own key (so compaction can never bring it back) and tries the next version.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaProducer

from schemas.wire_format import PUBLISHED, PublishedVersion
from topics.view import TopicView

log = logging.getLogger(__name__)


def writable_subjects(ingest_topic: str) -> dict[str, tuple[PublishedVersion, ...]]:
    """Each subject of the ingest topic's values, with the published versions it may hold."""
    subjects = {f"{ingest_topic}-value": PUBLISHED}
    for published in PUBLISHED:
        subjects[f"{ingest_topic}-{published.full_name}"] = (published,)
        subjects[published.full_name] = (published,)
    return subjects


class Subjects(TopicView):
    """Which schema ids each subject holds, by version."""

    def __init__(self, bootstrap_servers: str, topic: str, wait_s: float = 5.0) -> None:
        super().__init__(bootstrap_servers, topic, wait_s)
        self._versions: dict[str, dict[int, int]] = {}
        self._write_lock = asyncio.Lock()

    def apply(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:
            return  # a tombstone only lets compaction drop a registration that lost
        try:
            found = orjson.loads(value)
            subject, version, schema_id = found["subject"], int(found["version"]), int(found["id"])
        except Exception:
            log.error("schema registry: undecodable record at offset %s skipped", offset)
            return
        versions = self._versions.setdefault(subject, {})
        if version not in versions and schema_id not in versions.values():
            versions[version] = schema_id

    def subjects(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, subject: str) -> dict[int, int]:
        """The schema id of each version of `subject`, oldest first (empty if none)."""
        return dict(sorted(self._versions.get(subject, {}).items()))

    async def register(self, producer: AIOKafkaProducer, subject: str, published: PublishedVersion) -> int:
        """Make `published` a version of `subject` unless it is one already; its version."""
        held = self._held(subject, published)
        if held is not None:
            return held  # a registration is never undone: no need to catch up with Kafka first
        async with self._write_lock:
            await self.sync()
            for _ in range(10):
                held = self._held(subject, published)
                if held is not None:
                    return held
                versions = self._versions.get(subject, {})
                version = max(versions, default=0) + 1
                key = orjson.dumps([subject, version, published.schema_id])
                await self.append(producer, key, orjson.dumps(
                    {"subject": subject, "version": version, "id": published.schema_id}))
                if self._versions[subject].get(version) != published.schema_id:
                    await producer.send_and_wait(self.topic, None, key=key)  # lost to another writer
            raise TimeoutError(f"could not register schema id {published.schema_id} under {subject}")

    def _held(self, subject: str, published: PublishedVersion) -> int | None:
        return next((v for v, i in self._versions.get(subject, {}).items() if i == published.schema_id), None)

    async def publish(self, producer: AIOKafkaProducer, ingest_topic: str) -> None:
        """Make every published version a version of `<ingest topic>-value`, oldest first."""
        for published in PUBLISHED:
            await self.register(producer, f"{ingest_topic}-value", published)
