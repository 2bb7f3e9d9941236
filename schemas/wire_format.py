"""The published versions of the ingest event schema, and the Confluent wire format they travel in.

A Confluent-framed message is the magic byte 0x00, the writer schema's id as a 4-byte
big-endian integer, then the Avro body: what confluent-kafka's `AvroSerializer` and Java's
`KafkaAvroSerializer` write. Here a published version's schema id is its version number
(`IngestEvent` 1, `IngestMessage` 2), fixed for good: every ingress, every worker and every
client agrees on an id without reading anything, and the registry's compacted topic
(`schemas.subjects`) only records which subjects hold which versions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import orjson

MAGIC = 0
FRAME_HEADER_BYTES = 5  # the magic byte and the schema id


@dataclass(frozen=True)
class PublishedVersion:
    """One published version of the ingest event schema."""

    version: int
    full_name: str
    text: str  # the schema as the registry serves it: the .avsc file, compact JSON
    header_value: bytes  # its value of the `reach-event-version` header

    @property
    def schema_id(self) -> int:
        return self.version


def _load(version: int, file: str) -> PublishedVersion:
    schema = orjson.loads((Path(__file__).parent / file).read_bytes())
    return PublishedVersion(version, f"{schema['namespace']}.{schema['name']}", orjson.dumps(schema).decode(),
                            str(version).encode())


PUBLISHED: tuple[PublishedVersion, ...] = (_load(1, "ingest_event.avsc"), _load(2, "ingest_event_v2.avsc"))
BY_ID: dict[int, PublishedVersion] = {p.schema_id: p for p in PUBLISHED}


def known_ids() -> str:
    """The schema ids a frame may carry, for error messages."""
    return ", ".join(f"{p.schema_id} ({p.full_name})" for p in PUBLISHED)


def frame(schema_id: int, body: bytes) -> bytes:
    """`body` in the Confluent wire format, written with schema `schema_id`."""
    return struct.pack(">bI", MAGIC, schema_id) + body


def frame_schema_id(payload: bytes) -> int:
    """The schema id of a Confluent frame (the caller checked the magic byte and the length)."""
    return int.from_bytes(payload[1:FRAME_HEADER_BYTES], "big")
