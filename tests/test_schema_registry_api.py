"""`/schema-registry`: Confluent's Schema Registry API for the ingest event schemas, served alike by
every ingress process from one compacted topic, with Confluent's answers and error codes."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import httpx
import orjson

from reach.config import Settings
from schemas.wire_format import PUBLISHED
from tests.support import ingresses
from topics import service_topics

V1, V2 = PUBLISHED
MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


def _post(base: str, path: str, schema: str | dict[str, Any], **params: str) -> httpx.Response:
    text = schema if isinstance(schema, str) else orjson.dumps(schema).decode()
    return httpx.post(f"{base}/schema-registry{path}", params=params, timeout=30,
                      content=orjson.dumps({"schema": text}), headers={"Content-Type": MEDIA_TYPE})


def _get(base: str, path: str) -> httpx.Response:
    return httpx.get(f"{base}/schema-registry{path}", timeout=30)


def _v2_changed(**extra_field: Any) -> dict[str, Any]:
    schema = orjson.loads(V2.text)
    schema["fields"].append(extra_field)
    return schema


def _error(response: httpx.Response, status: int, code: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == MEDIA_TYPE, response.headers
    body = response.json()
    assert body["error_code"] == code, body
    return body["message"]


def test_every_ingress_answers_the_same_ids_and_versions(settings: Settings, tmp_path: Path) -> None:
    ingest = service_topics(settings).ingest.name
    value_subject = f"{ingest}-value"
    with ingresses(settings, tmp_path, 2) as (a, b):
        for base in (a, b):
            # Every published version is registered at start, oldest first.
            assert _get(base, "/subjects").json() == [value_subject]
            assert _get(base, f"/subjects/{value_subject}/versions").json() == [1, 2]
            latest = _get(base, f"/subjects/{value_subject}/versions/latest")
            assert latest.headers["content-type"] == MEDIA_TYPE
            assert latest.json() == {"subject": value_subject, "version": 2, "id": 2, "schema": V2.text}
            assert _get(base, f"/subjects/{value_subject}/versions/1").json()["id"] == 1
            assert _get(base, "/schemas/ids/1").json() == {"schema": V1.text}
            assert orjson.loads(_get(base, "/schemas/ids/2/schema").content) == orjson.loads(V2.text)
            assert _get(base, "/schemas/types").json() == ["AVRO"]
            assert _get(base, "/config").json() == {"compatibilityLevel": "BACKWARD"}

        # Registered through one ingress, answered by the other (TopicRecordNameStrategy's subject);
        # a registration of what a subject already holds changes nothing.
        record_subject = f"{ingest}-{V2.full_name}"
        assert _post(a, f"/subjects/{record_subject}/versions", V2.text).json() == {"id": 2}
        assert _get(b, f"/subjects/{record_subject}/versions").json() == [1]
        assert _post(b, f"/subjects/{record_subject}/versions", V2.text).json() == {"id": 2}
        assert _post(b, f"/subjects/{value_subject}/versions", V1.text).json() == {"id": 1}
        explicit = httpx.post(f"{b}/schema-registry/subjects/{value_subject}/versions",
                              json={"schema": V2.text, "schemaType": None, "references": [], "metadata": None})
        assert explicit.json() == {"id": 2}, explicit.text
        assert _get(a, "/schemas/ids/2/versions").json() == [
            {"subject": record_subject, "version": 1}, {"subject": value_subject, "version": 2}]

        # Both ingresses register the same new subject at once: one version, the same everywhere.
        name_subject = V1.full_name
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda base: _post(base, f"/subjects/{name_subject}/versions", V1.text).json(),
                                    [a, b] * 4))
        assert answers == [{"id": 1}] * 8, answers
        for base in (a, b):
            assert _get(base, f"/subjects/{name_subject}/versions").json() == [1]
            assert _get(base, "/subjects").json() == sorted([value_subject, record_subject, name_subject])
            found = _post(base, f"/subjects/{value_subject}", V1.text)
            assert found.json() == {"subject": value_subject, "version": 1, "id": 1, "schema": V1.text}


def test_refusals_carry_confluent_error_codes_and_change_nothing(settings: Settings, tmp_path: Path) -> None:
    ingest = service_topics(settings).ingest.name
    subject = f"{ingest}-value"
    with ingresses(settings, tmp_path, 1) as (base,):
        before = _get(base, "/subjects").json()
        # Not Avro at all, or no schema in the body: 422 "invalid schema".
        assert "Invalid schema" in _error(_post(base, f"/subjects/{subject}/versions", "{not json"), 422, 42201)
        assert "nosuch" in _error(_post(base, f"/subjects/{subject}/versions", {
            "type": "record", "name": "X", "fields": [{"name": "a", "type": "nosuch"}]}), 422, 42201)
        nested = '{"type":"array","items":' * 3000 + '"int"' + "}" * 3000
        assert "nested too deeply" in _error(_post(base, f"/subjects/{subject}/versions", nested), 422, 42201)
        no_schema = httpx.post(f"{base}/schema-registry/subjects/{subject}/versions", json={"schemaType": "AVRO"})
        _error(no_schema, 422, 42201)
        protobuf = httpx.post(f"{base}/schema-registry/subjects/{subject}/versions",
                              json={"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"})
        assert "PROTOBUF" in _error(protobuf, 422, 42201)
        # A field the latest version's data lacks, without a default: 409 incompatible, with why.
        incompatible = _error(_post(base, f"/subjects/{subject}/versions", _v2_changed(name="x", type="int")),
                              409, 409)
        assert "incompatible" in incompatible and "reader_field_missing_default_value" in incompatible
        # Compatible, but not what the topic accepts: refused, naming what is.
        unpublished = _error(_post(base, f"/subjects/{subject}/versions", _v2_changed(
            name="x", type=["null", "int"], default=None)), 422, 42205)
        assert "Not a published version" in unpublished and "reach.ingest.v2.IngestMessage (schema id 2)" in unpublished
        # Only the ingest topic's subjects are writable; a record-name subject takes its own version only.
        assert "not writable" in _error(_post(base, "/subjects/orders-value/versions", V2.text), 422, 42205)
        assert "schema id 2" in _error(_post(base, f"/subjects/{V2.full_name}/versions", V1.text), 422, 42205)
        assert _get(base, "/subjects").json() == before

        # Lookups and reads of what is not there.
        _error(_post(base, f"/subjects/{subject}", _v2_changed(name="x", type=["null", "int"], default=None)),
               404, 40403)
        _error(_post(base, "/subjects/orders-value", V2.text), 404, 40401)
        _error(_get(base, "/subjects/orders-value/versions"), 404, 40401)
        _error(_get(base, f"/subjects/{subject}/versions/3"), 404, 40402)
        _error(_get(base, f"/subjects/{subject}/versions/first"), 422, 42202)
        assert "schema ids here are 1" in _error(_get(base, "/schemas/ids/3"), 404, 40403)
        _error(_get(base, "/no/such/path"), 404, 404)
        wrong_method = httpx.delete(f"{base}/schema-registry/subjects/{subject}/versions")
        _error(wrong_method, 405, 405)
        assert wrong_method.headers["allow"] == "GET, HEAD, POST"

        # The compatibility check answers without registering anything.
        path = f"/compatibility/subjects/{subject}/versions/latest"
        assert _post(base, path, _v2_changed(name="x", type=["null", "int"], default=None)).json() == {
            "is_compatible": True}
        answer = _post(base, path, _v2_changed(name="x", type="int"), verbose="true").json()
        assert answer["is_compatible"] is False and "reader_field_missing_default_value" in answer["messages"][0]
        assert _post(base, f"/compatibility/subjects/{subject}/versions/1", V1.text).json() == {"is_compatible": True}
        assert _post(base, f"/compatibility/subjects/{subject}/versions", V1.text).json() == {"is_compatible": False}
        _error(_post(base, "/compatibility/subjects/orders-value/versions", V1.text), 404, 40401)
        assert _get(base, f"/subjects/{subject}/versions").json() == [1, 2]


def test_the_first_registration_of_a_version_in_log_order_wins_in_every_process() -> None:
    """The fold every ingress applies: a later record for a taken version, or for an id the
    subject already holds, changes nothing; tombstones (of records that lost) change nothing; so
    a log compacted down to the winners folds to the same subjects."""
    from schemas.subjects import Subjects

    def record(subject: str, version: int, schema_id: int) -> tuple[bytes, bytes]:
        return (orjson.dumps([subject, version, schema_id]),
                orjson.dumps({"subject": subject, "version": version, "id": schema_id}))

    log = [record("s", 1, 2), record("s", 1, 1), record("s", 2, 2), (record("s", 1, 1)[0], None),
           record("s", 2, 1), record("t", 1, 1), record("s", 2, 1)]
    folded = Subjects("unused:9092", "unused")
    for offset, (key, value) in enumerate(log):
        folded.apply(offset, key, value)
    assert folded.versions("s") == {1: 2, 2: 1} and folded.versions("t") == {1: 1}
    compacted = Subjects("unused:9092", "unused")
    for offset, (key, value) in enumerate([log[0], log[5], log[6]]):
        compacted.apply(offset, key, value)
    assert [compacted.versions(s) for s in compacted.subjects()] == [folded.versions(s) for s in folded.subjects()]
