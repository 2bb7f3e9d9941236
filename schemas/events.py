"""Encoding and decoding of ingest events (Avro, schemaless, with a version header)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastavro
import orjson

INGEST_EVENT_VERSION = b"1"
VERSION_HEADER = "reach-event-version"
INGEST_EVENT_SCHEMA = fastavro.parse_schema(
    orjson.loads((Path(__file__).parent / "ingest_event.avsc").read_bytes())
)


def resource_key(partner_id: str, tenant_id: str, schema_definition_id: str, external_id: str) -> bytes:
    """The Kafka key of every event of one resource: its parts, percent-encoded, joined by '/'."""
    return "/".join(quote(p, safe="") for p in (partner_id, tenant_id, schema_definition_id, external_id)).encode()


def encode_ingest_event(event: dict[str, Any]) -> bytes:
    """Avro-encode one ingest event (a dict with the fields of `ingest_event.avsc`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, INGEST_EVENT_SCHEMA, event)
    return buf.getvalue()


def decode_ingest_event(payload: bytes) -> dict[str, Any]:
    """Decode bytes written by `encode_ingest_event`."""
    return fastavro.schemaless_reader(io.BytesIO(payload), INGEST_EVENT_SCHEMA)  # type: ignore[return-value]


def record_data(event: dict[str, Any]) -> dict[str, Any]:
    """The record carried by an event, parsed."""
    return orjson.loads(event["data"])
