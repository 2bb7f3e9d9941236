"""The ingest events `build_ingest_batch` writes are byte for byte what fastavro writes for the
published schema, so that any Avro reader of `ingest_event.avsc` reads them."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from schemas.events import build_ingest_batch, decode_ingest_event, encode_ingest_event

TEXT = st.text(max_size=40)
RECORD = st.dictionaries(TEXT, st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | TEXT, max_size=5)


@settings(max_examples=300, deadline=None)
@given(partner=TEXT, tenant=TEXT, definition=TEXT, records=st.lists(st.tuples(TEXT, RECORD), max_size=5),
       version=st.none() | st.integers(0, 2**31 - 1), on_conflict=st.sampled_from(["upsert", "reject"]),
       ignore_unknown=st.booleans(), wait=st.integers(0, 86400),
       accepted_at=st.integers(0, 2**63 - 1) | st.integers(-2**63, -1))
def test_events_are_byte_identical_to_fastavro(partner: str, tenant: str, definition: str,
                                               records: list, version: int | None, on_conflict: str,
                                               ignore_unknown: bool, wait: int, accepted_at: int) -> None:
    batch = build_ingest_batch(partner, tenant, definition, records, schema_version=version,
                               on_conflict=on_conflict, ignore_unknown_fields=ignore_unknown,
                               dependency_wait_timeout=wait, accepted_at=accepted_at)
    assert len(batch.messages) == len(records)
    for index, ((external_id, record), (_, value)) in enumerate(zip(records, batch.messages)):
        event = decode_ingest_event(value)
        assert encode_ingest_event(event) == value
        assert (event["recordIndex"], event["externalId"], event["schemaVersion"], event["onConflict"],
                event["acceptedAt"], event["partnerId"]) == \
            (index, external_id, version, on_conflict, accepted_at, partner)


def test_long_values_use_multi_byte_lengths() -> None:
    record = {"text": "é" * 20_000}
    batch = build_ingest_batch("p", "t", "d", [("x" * 17_000, record)], accepted_at=2**62)
    (_, value), = batch.messages
    assert encode_ingest_event(decode_ingest_event(value)) == value
