"""The ingest events: writes of a batch on the ingest topic (the public Kafka contract).

Two versions, named by the header `reach-event-version`; a message without it, of another
version, or whose bytes are not exactly one value of its version's schema goes to the
dead-letter topic.

- Version 2 (`ingest_event_v2.avsc`, what the ingress writes): an `IngestMessage` holds a
  batch's description once and a list of operations (`upsert`, `reject`, `patch`, `delete`),
  applied in list order. Key: the first operation's `resource_key(...)`. An operation read on
  another partition than its resource's is handed on there (`processors.hand_on`): one
  resource, one partition, one order.
- Version 1 (`ingest_event.avsc`, still accepted from direct producers): one `IngestEvent`
  per record, an upload (`onConflict` upsert or reject). Key: `resource_key(...)`.

Either version may also come in the Confluent wire format (`schemas.wire_format`): the magic
byte 0x00 and the schema id (1 or 2) in front of the same Avro body, the header optional (if
present it must name the same version). A message is framed if its first byte is 0x00: an
unframed value of either version starts with the length of a non-empty string, never 0x00.

Both decode to the same per-operation form (`decode_ingest_message`): the fields of version 1
plus `op`, `batchType`, `cascade` and `version` (1 or 2).
"""

from __future__ import annotations

import functools
import io
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast
from urllib.parse import quote, unquote

import fastavro
import orjson

from schemas.batch_events import DELETE_BATCH, INGEST_BATCH, PATCH_BATCH
from schemas.wire_format import BY_ID, FRAME_HEADER_BYTES, MAGIC, frame_schema_id, known_ids
from topics.partitioning import partition_for

VERSION_HEADER = "reach-event-version"
# Optional, on version-2 deletes: JSON {"<recordIndex>": {"wait": [keys], "byCascade": bool}},
# what the ingress planned for that delete (`ingest.deletes`): the
# referrers its request deletes too; or that its request's cascade may delete it first.
PLAN_HEADER = "reach-delete-plan"
INGEST_EVENT_V1, INGEST_EVENT_V2 = b"1", b"2"
INGEST_HEADERS_V1 = [(VERSION_HEADER, INGEST_EVENT_V1)]
INGEST_HEADERS = [(VERSION_HEADER, INGEST_EVENT_V2)]
INGEST_EVENT_SCHEMA = fastavro.parse_schema(
    orjson.loads((Path(__file__).parent / "ingest_event.avsc").read_bytes())
)
INGEST_MESSAGE_SCHEMA: dict[str, Any] = fastavro.parse_schema(  # type: ignore[assignment]  # a record schema
    orjson.loads((Path(__file__).parent / "ingest_event_v2.avsc").read_bytes())
)
OPS = ("upsert", "reject", "patch", "delete")
BATCH_TYPE_OF_OP = {"upsert": INGEST_BATCH, "reject": INGEST_BATCH, "patch": PATCH_BATCH, "delete": DELETE_BATCH}

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


class UndecodableEvent(Exception):
    """A message on the ingest topic that is not an `IngestEvent` of a version we read."""


# What `quote` leaves as it is (RFC 3986 unreserved): most ids, spared its per-call cost.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def resource_key(partner_id: str, tenant_id: str, schema_definition_id: str, external_id: str) -> bytes:
    """The Kafka key of every event of one resource: its parts, percent-encoded, joined by '/'."""
    return "/".join(p if _UNRESERVED(p) else quote(p, safe="")
                    for p in (partner_id, tenant_id, schema_definition_id, external_id)).encode()


def operation_keys(operations: list[Operation]) -> list[bytes]:
    """`resource_key` of each operation of one decoded message (its operations share partner,
    tenant and definition: that part is encoded once)."""
    first = operations[0]
    prefix = key_prefix(first["partnerId"], first["tenantId"], first["schemaDefinitionId"])
    return [keyed(prefix, op["externalId"]) for op in operations]


@functools.lru_cache(maxsize=4096)
def key_prefix(partner_id: str, tenant_id: str, schema_definition_id: str) -> bytes:
    """What the keys of one tenant's resources of one definition share (`resource_key(..., "")`),
    remembered for the last 4096 tenants x definitions: each part is otherwise checked for
    escaping per key."""
    return resource_key(partner_id, tenant_id, schema_definition_id, "")


def keyed(prefix: bytes, external_id: str) -> bytes:
    """`resource_key` from the key of its first three parts (`key_prefix`), for keys that
    share them."""
    return prefix + (external_id if _UNRESERVED(external_id) else quote(external_id, safe="")).encode()


def resource_key_parts(key: bytes) -> tuple[str, str, str, str]:
    """The partner, tenant, schema definition id and external id of a resource key; ValueError
    if `key` is not one."""
    parts = key.decode(errors="replace").split("/")
    if len(parts) != 4:
        raise ValueError(f"not a resource key: {key!r}")
    partner_id, tenant_id, definition_id, external_id = (unquote(p) for p in parts)
    return partner_id, tenant_id, definition_id, external_id


def encode_ingest_event(event: dict[str, Any]) -> bytes:
    """Avro-encode one ingest event (a dict with the fields of `ingest_event.avsc`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, INGEST_EVENT_SCHEMA, event)
    return buf.getvalue()


def header(headers: Headers, name: str) -> bytes | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return next((value for key, value in items if key == name), None)


def encode_ingest_message(message: dict[str, Any]) -> bytes:
    """Avro-encode one version-2 message (a dict with the fields of `ingest_event_v2.avsc`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, INGEST_MESSAGE_SCHEMA, message)
    return buf.getvalue()


def _read_exactly(payload: bytes, schema: Any, name: str, schema_id: int | None) -> dict[str, Any]:
    buf = io.BytesIO(payload)
    try:
        value = fastavro.schemaless_reader(buf, schema)
    except Exception as exc:  # fastavro raises many kinds on bad bytes
        raise UndecodableEvent(f"not an {_named(name, schema_id)}: {type(exc).__name__}: {exc}") from None
    if buf.tell() != len(payload):
        raise UndecodableEvent(f"not an {_named(name, schema_id)}: {len(payload) - buf.tell()} bytes left over")
    return value  # type: ignore[return-value]


def _named(name: str, schema_id: int | None) -> str:
    return name if schema_id is None else f"{name} (in a Confluent frame of schema id {schema_id})"


class Resource(TypedDict):
    """A stored resource: the message of its key on the resources topic (the workers' table),
    as reads return it (docs/api.md 6)."""

    id: str  # derived from the event that created it
    schemaDefinitionId: str
    platformId: str  # the partner
    businessId: str  # the tenant
    resourceExternalId: str
    createdAt: int  # epoch ms, the worker's clock
    updatedAt: int
    data: dict[str, Any]
    # The keys of the resources it references (absent: stored before workers kept them).
    references: NotRequired[list[str]]


class Operation(TypedDict):
    """One operation of an ingest message in the per-operation form every worker step takes
    (`decode_ingest_message`): its message's fields, then its own. A cascade's delete, which no
    batch counts, and a version-1 event lack what is marked NotRequired."""

    batchId: str
    batchType: NotRequired[str]
    recordCount: NotRequired[int]
    partnerId: str
    tenantId: str
    schemaDefinitionId: str
    schemaVersion: int | None
    ignoreUnknownFields: bool
    dependencyWaitTimeout: int
    cascade: bool
    acceptedAt: NotRequired[int]
    eventId: str
    recordIndex: int
    externalId: str
    op: str  # upsert, reject, patch or delete
    data: str | None  # the record as JSON text; None for a delete
    onConflict: str  # upsert or reject (the operation of a version-1 event)
    version: NotRequired[int]  # of the event's encoding: 1 or 2
    plan: NotRequired[dict[str, Any] | None]  # a delete's dry-run plan (`processors.resource_processor`)
    cascadeFor: NotRequired[dict[str, Any]]  # a cascade's delete: the request it answers


def decode_ingest_message(payload: bytes | None, headers: Headers) -> list[Operation]:
    """The operations of a message of the ingest topic, in order, each in the per-operation
    form; or raise UndecodableEvent saying why not."""
    version = header(headers, VERSION_HEADER)
    schema_id = None
    if payload and payload[0] == MAGIC:
        version, payload = _unframe(payload, version)
        schema_id = int(version)
    elif version not in (INGEST_EVENT_V1, INGEST_EVENT_V2):
        if version is None and payload:
            raise UndecodableEvent(f"no {VERSION_HEADER} header, and the first byte 0x{payload[0]:02x} is not "
                                   f"the Confluent wire format's magic byte 0x00")
        shown = "missing" if version is None else repr(version.decode(errors="replace"))
        raise UndecodableEvent(f"unsupported event version ({VERSION_HEADER} header {shown}; expected 1 or 2)")
    if not payload:
        raise UndecodableEvent("empty message value")
    if version == INGEST_EVENT_V1:
        event = _read_exactly(payload, INGEST_EVENT_SCHEMA, "IngestEvent v1", schema_id)
        event["op"], event["batchType"], event["cascade"], event["version"] = \
            event["onConflict"], INGEST_BATCH, False, 1
        return [cast(Operation, event)]
    message = _read_exactly(payload, INGEST_MESSAGE_SCHEMA, "IngestMessage v2", schema_id)
    operations = message.pop("operations")
    if not operations:
        raise UndecodableEvent("an IngestMessage v2 without operations")
    plans = _delete_plans(headers)
    # Each operation a copy of one filled-in dict (this runs for every record a worker
    # applies): a third of the time of a dict display spreading the message's fields.
    base = {**message, "eventId": None, "recordIndex": None, "externalId": None, "op": None, "data": None,
            "onConflict": "upsert", "version": 2, "plan": None}
    prefix = message["batchId"] + ":"
    out = []
    for op in operations:
        index = op["recordIndex"]
        operation = base.copy()
        operation["eventId"], operation["recordIndex"] = prefix + str(index), index
        operation["externalId"], operation["data"], operation["op"] = op["externalId"], op["data"], op["op"]
        if op["op"] == "reject":
            operation["onConflict"] = "reject"
        if plans:
            operation["plan"] = plans.get(str(index))
        out.append(operation)
    return cast(list[Operation], out)  # one cast for the list


_MESSAGE_FIELDS = tuple(f["name"] for f in INGEST_MESSAGE_SCHEMA["fields"] if f["name"] != "operations")


def encode_operations(operations: list[Operation]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of one version-2 message of `operations`: operations of one batch
    in the per-operation form of `decode_ingest_message`, in the order they apply (its key is
    the first one's resource key)."""
    first: Mapping[str, Any] = operations[0]  # its message's fields, by name
    value = encode_ingest_message({**{name: first[name] for name in _MESSAGE_FIELDS}, "operations": [
        {"recordIndex": op["recordIndex"], "externalId": op["externalId"], "op": op["op"], "data": op["data"]}
        for op in operations]})
    return value, _message_headers({str(op["recordIndex"]): op["plan"] for op in operations
                                    if op.get("plan") is not None})


def _message_headers(plans: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The headers of a version-2 message whose deletes have these plans (by record index)."""
    return [*INGEST_HEADERS, (PLAN_HEADER, orjson.dumps(plans))] if plans else list(INGEST_HEADERS)


def _unframe(payload: bytes, version: bytes | None) -> tuple[bytes, bytes]:
    """The event version and the Avro body of a Confluent-framed message."""
    if len(payload) < FRAME_HEADER_BYTES:
        raise UndecodableEvent(f"truncated Confluent frame: {len(payload)} bytes, but the magic byte and the "
                               f"schema id alone take {FRAME_HEADER_BYTES}")
    schema_id = frame_schema_id(payload)
    published = BY_ID.get(schema_id)
    if published is None:
        raise UndecodableEvent(f"unknown schema id {schema_id} in a Confluent frame: the ingest topic's schema ids "
                               f"are {known_ids()}")
    if version is not None and version != published.header_value:
        raise UndecodableEvent(f"the {VERSION_HEADER} header says {version.decode(errors='replace')!r}, but the "
                               f"frame's schema id {schema_id} is version {published.version}")
    body = payload[FRAME_HEADER_BYTES:]
    if not body:
        raise UndecodableEvent(f"a Confluent frame of schema id {schema_id} without an Avro body")
    return published.header_value, body


def _delete_plans(headers: Headers) -> dict[str, Any]:
    raw = header(headers, PLAN_HEADER)
    if raw is None:
        return {}
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UndecodableEvent(f"the {PLAN_HEADER} header is not JSON") from None
    if not isinstance(found, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("wait", []), list) for v in found.values()):
        raise UndecodableEvent(f'the {PLAN_HEADER} header must map record indexes to {{"wait": [...]}}')
    return found


@dataclass(frozen=True)
class IngestBatch:
    """A batch to produce to the ingest topic: every message as (key, value, headers)."""

    batch_id: str
    accepted_at: int
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]


# The most bytes of operations one grouped message carries: well below the broker's default
# 1 MiB `message.max.bytes`, and small enough that one message is a moment's work.
MAX_MESSAGE_BYTES = 256 * 1024


def build_ingest_batch(partner_id: str, tenant_id: str, schema_definition_id: str,
                       records: list[tuple[str, dict[str, Any] | None]], *, op: str = "upsert",
                       schema_version: int | None = None, ignore_unknown_fields: bool = False,
                       dependency_wait_timeout: int = 0, cascade: bool = False, batch_id: str | None = None,
                       accepted_at: int | None = None, partitions: int | None = None,
                       plans: Mapping[int, dict[str, Any]] | None = None) -> IngestBatch:
    """The version-2 messages of one batch, one operation `op` per record: `records` are
    (externalId, record) pairs in order (record None for a delete).

    With `partitions` (the ingest topic's partition count) the operations of one partition
    travel together, in batch order, in as few messages as `MAX_MESSAGE_BYTES` allows: Kafka's
    and the worker's costs per message are then paid per group. Without it, one message per
    record. `plans`: the delete plan of some record indexes (`PLAN_HEADER`).

    This is what the HTTP ingress produces, and what a direct producer should produce.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}")
    batch_id = batch_id or str(uuid.uuid4())
    accepted_at = int(time.time() * 1000) if accepted_at is None else accepted_at
    # Avro binary of a record is its fields in order, so what every message of the batch shares
    # is encoded once (byte-identical to fastavro's writer, which costs ~10 µs per message).
    head = b"".join((
        _string(batch_id), _long(_BATCH_TYPES.index(BATCH_TYPE_OF_OP[op])), _long(len(records)),
        _string(partner_id), _string(tenant_id), _string(schema_definition_id),
        b"\x00" if schema_version is None else b"\x02" + _long(schema_version),
        b"\x01" if ignore_unknown_fields else b"\x00", _long(dependency_wait_timeout),
        b"\x01" if cascade else b"\x00", _long(accepted_at)))
    op_code = _long(OPS.index(op))
    prefix = key_prefix(partner_id, tenant_id, schema_definition_id)  # what every key shares
    plans = plans or {}
    messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    def close(group: _Group) -> None:
        # An array of one block of n items, then the empty block that ends it.
        value = b"".join((head, _long(len(group.operations)), *group.operations, b"\x00"))
        messages.append((group.key, value, _message_headers({str(i): plans[i] for i in group.indexes
                                                             if i in plans})))

    open_groups: dict[int, _Group] = {}
    for index, (external_id, record) in enumerate(records):
        if record is None:
            data = b"\x00"
        else:
            raw = orjson.dumps(record)
            data = b"\x02" + _long(len(raw)) + raw
        operation = b"".join((_long(index), _string(external_id), op_code, data))
        key = keyed(prefix, external_id)
        partition = -1 if partitions is None else partition_for(key, partitions)
        group = open_groups.get(partition)
        if group is not None and (partitions is None or group.size + len(operation) > MAX_MESSAGE_BYTES):
            close(group)
            group = None
        if group is None:
            group = open_groups[partition] = _Group(key)
        group.add(index, operation)
    for group in open_groups.values():
        close(group)
    return IngestBatch(batch_id, accepted_at, messages)


@dataclass
class _Group:
    """Operations of one partition waiting to become a message, keyed by the first one's resource."""

    key: bytes
    operations: list[bytes] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    size: int = 0

    def add(self, index: int, operation: bytes) -> None:
        self.operations.append(operation)
        self.indexes.append(index)
        self.size += len(operation)


def message_values(batch: IngestBatch) -> list[tuple[bytes, dict[str, Any], list[tuple[str, bytes]]]]:
    """The messages of `batch` with each value as the dict of its schema's fields, and without the
    version header: what a stock Avro serializer takes (it frames each value with its schema id)."""
    out = []
    for key, value, headers in batch.messages:
        v1 = header(headers, VERSION_HEADER) == INGEST_EVENT_V1
        decoded = _read_exactly(value, INGEST_EVENT_SCHEMA if v1 else INGEST_MESSAGE_SCHEMA,
                                "IngestEvent v1" if v1 else "IngestMessage v2", None)
        out.append((key, decoded, [(k, v) for k, v in headers if k != VERSION_HEADER]))
    return out


def build_ingest_batch_v1(partner_id: str, tenant_id: str, schema_definition_id: str,
                          records: list[tuple[str, dict[str, Any]]], *, schema_version: int | None = None,
                          on_conflict: str = "upsert", ignore_unknown_fields: bool = False,
                          dependency_wait_timeout: int = 0, batch_id: str | None = None,
                          accepted_at: int | None = None) -> IngestBatch:
    """The version-1 events of one upload (one `IngestEvent` per record), as producers written
    before version 2 send them."""
    batch_id = batch_id or str(uuid.uuid4())
    accepted_at = int(time.time() * 1000) if accepted_at is None else accepted_at
    messages = [(resource_key(partner_id, tenant_id, schema_definition_id, external_id), encode_ingest_event({
        "eventId": f"{batch_id}:{index}", "batchId": batch_id, "recordIndex": index, "recordCount": len(records),
        "partnerId": partner_id, "tenantId": tenant_id, "schemaDefinitionId": schema_definition_id,
        "schemaVersion": schema_version, "externalId": external_id, "onConflict": on_conflict,
        "ignoreUnknownFields": ignore_unknown_fields, "dependencyWaitTimeout": dependency_wait_timeout,
        "acceptedAt": accepted_at, "data": orjson.dumps(record).decode()}), list(INGEST_HEADERS_V1))
        for index, (external_id, record) in enumerate(records)]
    return IngestBatch(batch_id, accepted_at, messages)


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
_BATCH_TYPES = [symbol for field in INGEST_MESSAGE_SCHEMA["fields"] if field["name"] == "batchType"
                for symbol in field["type"]["symbols"]]


def _long(n: int) -> bytes:
    return _SMALL_LONGS[n] if 0 <= n < len(_SMALL_LONGS) else _zigzag(n)


def _string(text: str) -> bytes:
    data = text.encode()
    return _long(len(data)) + data
