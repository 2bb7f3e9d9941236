"""The ingest event: one record of a batch on the ingest topic (the public Kafka contract).

Value: Avro binary (schemaless) of `ingest_event.avsc`, version 1. Header
`reach-event-version: 1` names the version; events without it, of another version, or whose
bytes are not exactly one `IngestEvent` go to the dead-letter topic. Key: `resource_key(...)`.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastavro
import orjson

INGEST_EVENT_VERSION = b"1"
VERSION_HEADER = "reach-event-version"
INGEST_HEADERS = [(VERSION_HEADER, INGEST_EVENT_VERSION)]
INGEST_EVENT_SCHEMA = fastavro.parse_schema(
    orjson.loads((Path(__file__).parent / "ingest_event.avsc").read_bytes())
)

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


class UndecodableEvent(Exception):
    """A message on the ingest topic that is not an `IngestEvent` of a version we read."""


# What `quote` leaves as it is (RFC 3986 unreserved): most ids, spared its per-call cost.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def resource_key(partner_id: str, tenant_id: str, schema_definition_id: str, external_id: str) -> bytes:
    """The Kafka key of every event of one resource: its parts, percent-encoded, joined by '/'."""
    return "/".join(p if _UNRESERVED(p) else quote(p, safe="")
                    for p in (partner_id, tenant_id, schema_definition_id, external_id)).encode()


def encode_ingest_event(event: dict[str, Any]) -> bytes:
    """Avro-encode one ingest event (a dict with the fields of `ingest_event.avsc`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, INGEST_EVENT_SCHEMA, event)
    return buf.getvalue()


def decode_ingest_event(payload: bytes) -> dict[str, Any]:
    """Decode bytes written by `encode_ingest_event` (no version check)."""
    return fastavro.schemaless_reader(io.BytesIO(payload), INGEST_EVENT_SCHEMA)  # type: ignore[return-value]


def header(headers: Headers, name: str) -> bytes | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return next((value for key, value in items if key == name), None)


def decode_ingest_message(payload: bytes | None, headers: Headers) -> dict[str, Any]:
    """Decode a message of the ingest topic, or raise UndecodableEvent saying why not."""
    version = header(headers, VERSION_HEADER)
    if version != INGEST_EVENT_VERSION:
        shown = "missing" if version is None else repr(version.decode(errors="replace"))
        raise UndecodableEvent(f"unsupported event version ({VERSION_HEADER} header {shown}; expected 1)")
    if not payload:
        raise UndecodableEvent("empty message value")
    buf = io.BytesIO(payload)
    try:
        event = fastavro.schemaless_reader(buf, INGEST_EVENT_SCHEMA)
    except Exception as exc:  # fastavro raises many kinds on bad bytes
        raise UndecodableEvent(f"not an IngestEvent v1: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(payload):
        raise UndecodableEvent(f"not an IngestEvent v1: {len(payload) - buf.tell()} bytes left over")
    return event  # type: ignore[return-value]


@dataclass(frozen=True)
class IngestBatch:
    """A batch to produce to the ingest topic: every (key, value) and the headers they carry."""

    batch_id: str
    accepted_at: int
    messages: list[tuple[bytes, bytes]]
    headers: list[tuple[str, bytes]]


def build_ingest_batch(partner_id: str, tenant_id: str, schema_definition_id: str,
                       records: list[tuple[str, dict[str, Any]]], *, schema_version: int | None = None,
                       on_conflict: str = "upsert", ignore_unknown_fields: bool = False,
                       dependency_wait_timeout: int = 0, batch_id: str | None = None,
                       accepted_at: int | None = None) -> IngestBatch:
    """The ingest events of one batch: `records` are (externalId, record) pairs, in order.

    This is what the HTTP ingress produces, and what a direct producer should produce.
    """
    batch_id = batch_id or str(uuid.uuid4())
    accepted_at = int(time.time() * 1000) if accepted_at is None else accepted_at
    # Avro binary of a record is its fields in order, so what every event of the batch shares
    # is encoded once (byte-identical to fastavro's writer, which costs ~10 µs per event).
    after_event_id = _string(batch_id)
    after_index = b"".join((
        _long(len(records)), _string(partner_id), _string(tenant_id), _string(schema_definition_id),
        b"\x00" if schema_version is None else b"\x02" + _long(schema_version)))
    after_external_id = b"".join((
        _long(_ON_CONFLICT.index(on_conflict)), b"\x01" if ignore_unknown_fields else b"\x00",
        _long(dependency_wait_timeout), _long(accepted_at)))
    messages = []
    for index, (external_id, record) in enumerate(records):
        data = orjson.dumps(record)
        value = b"".join((_string(f"{batch_id}:{index}"), after_event_id, _long(index), after_index,
                          _string(external_id), after_external_id, _long(len(data)), data))
        messages.append((resource_key(partner_id, tenant_id, schema_definition_id, external_id), value))
    return IngestBatch(batch_id, accepted_at, messages, list(INGEST_HEADERS))


def _zigzag(n: int) -> bytes:
    """Avro's encoding of an int or long: zigzag, then a base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_LONGS = [_zigzag(n) for n in range(1 << 14)]
_ON_CONFLICT = [symbol for field in INGEST_EVENT_SCHEMA["fields"] if field["name"] == "onConflict"
                for symbol in field["type"]["symbols"]]


def _long(n: int) -> bytes:
    return _SMALL_LONGS[n] if 0 <= n < len(_SMALL_LONGS) else _zigzag(n)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data
