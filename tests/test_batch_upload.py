"""Batch upload (docs/api.md §4): what the ingress accepts (202) and refuses (400/404/413) as a whole.

Most tests need no worker: the ingress decides alone. Tests that prove what was (not) saved
start a real worker.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from starlette.testclient import TestClient

from ingest.app import create_app
from reach.config import Settings
from tests.support import CUSTOMER_SCHEMA, Response, bearer, partner_token, tenant_token, unique, wait_terminal

DEFINITIONS = "/partner/schema-definitions"



# --- local helpers -----------------------------------------------------------------------

def partner_headers(partner: str = "partner-a") -> dict[str, str]:
    return bearer(partner_token(partner))


def tenant_headers(tenant: str = "tenant-1", partner: str = "partner-a") -> dict[str, str]:
    return bearer(tenant_token(partner, tenant))


def create_definition(client: TestClient, name: str = "Customer", plural: str | None = "customers",
                      schema: dict[str, Any] | None = None, partner: str = "partner-a") -> str:
    """Create a schema definition; return its id."""
    body: dict[str, Any] = {"name": name, "externalIdField": "id", "schema": schema or CUSTOMER_SCHEMA}
    if plural:
        body["pluralName"] = plural
    response = client.post(DEFINITIONS, json=body, headers=partner_headers(partner))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def upload(client: TestClient, schema: str, resources: Any, headers: dict[str, str] | None = None,
           query: dict[str, str] | None = None, **params: str) -> Response:
    """POST a batch; the query from `query` and `params`."""
    return client.post(f"/api/resources/{schema}/batch", json={"resources": resources},
                       params={**(query or {}), **params}, headers=headers or tenant_headers())


def post_raw(client: TestClient, schema: str, content: bytes, **query: str) -> Response:
    headers = {**tenant_headers(), "Content-Type": "application/json"}
    return client.post(f"/api/resources/{schema}/batch", content=content, params=query, headers=headers)


def assert_accepted(response: Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def assert_bad_request(response: Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["message"], str) and body["message"]
    return body


def record_errors(body: dict[str, Any], index: int) -> list[str]:
    """The `errors` entries about `resources[index]`."""
    errors = body.get("errors") or []
    assert all(isinstance(e, str) for e in errors), errors
    prefix = f"resources[{index}]"
    return [e for e in errors if e.startswith(prefix)]


def get_resource(client: TestClient, schema: str, external_id: str) -> Response:
    return client.get(f"/api/resources/{schema}/{external_id}", headers=tenant_headers())


VALID = [{"id": "c-1", "name": "Ann"}]


def each_case(cases: dict[str, Any], check: Any) -> None:
    """Run `check(case)` for every named case; fail once, naming every case that failed.

    (One deployment per test is costly to start, so related cases share one.)
    """
    failures = []
    for name, case in cases.items():
        try:
            check(case)
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc)[:400]}")
    assert not failures, "\n".join(failures)


# --- query rules ---------------------------------------------------------------------------

def test_query_value_outside_the_contract_is_refused(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(query: dict[str, str]) -> None:
        body = assert_bad_request(upload(ingress, "Customer", VALID, query=query))
        # A problem of the whole request is said in `message`, not as a record error.
        assert not any(e.startswith("resources[") for e in body.get("errors") or []), body

    each_case({
        "onconflict=merge": {"onconflict": "merge"},
        "onconflict=replace": {"onconflict": "replace"},
        "ignoreUnknownFields=yes": {"ignoreUnknownFields": "yes"},
        "ignoreUnknownFields=1": {"ignoreUnknownFields": "1"},
        "dependencyWaitTimeout=-1": {"dependencyWaitTimeout": "-1"},
        "dependencyWaitTimeout=1.5": {"dependencyWaitTimeout": "1.5"},
        "dependencyWaitTimeout=ten": {"dependencyWaitTimeout": "ten"},
        "dependencyWaitTimeout=86401": {"dependencyWaitTimeout": "86401"},
    }, check)


def test_every_allowed_query_value_is_accepted(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(query: dict[str, str]) -> None:
        data = assert_accepted(upload(ingress, "Customer", VALID, query=query))
        assert data["recordCount"] == 1

    each_case({
        "defaults": {},
        "onconflict=upsert": {"onconflict": "upsert"},
        "onconflict=reject": {"onconflict": "reject"},
        "ignoreUnknownFields=true": {"ignoreUnknownFields": "true"},
        "ignoreUnknownFields=false": {"ignoreUnknownFields": "false"},
        "dependencyWaitTimeout=0": {"dependencyWaitTimeout": "0"},
        "dependencyWaitTimeout=86400": {"dependencyWaitTimeout": "86400"},
        "all-together": {"onconflict": "reject", "ignoreUnknownFields": "true", "dependencyWaitTimeout": "60"},
    }, check)


# --- body rules ----------------------------------------------------------------------------

def test_malformed_body_is_refused(ingress: TestClient) -> None:
    create_definition(ingress)
    each_case({
        "not-json": b"not json at all",
        "truncated-json": b'{"resources": [',
        "empty-body": b"",
        "resources-missing": b'{"items": [{"id": "c-1", "name": "Ann"}]}',
        "top-level-array": b'[{"id": "c-1", "name": "Ann"}]',
        "resources-object": b'{"resources": {"id": "c-1", "name": "Ann"}}',
        "resources-string": b'{"resources": "c-1"}',
        "resources-null": b'{"resources": null}',
        "resources-empty": b'{"resources": []}',
    }, lambda content: assert_bad_request(post_raw(ingress, "Customer", content)))


def test_more_than_1000_resources_are_refused_and_1000_accepted(ingress: TestClient) -> None:
    create_definition(ingress)
    too_many = [{"id": f"c-{i}", "name": "n"} for i in range(1001)]
    assert_bad_request(upload(ingress, "Customer", too_many))
    data = assert_accepted(upload(ingress, "Customer", too_many[:1000]))
    assert data["recordCount"] == 1000


def test_resource_that_is_not_an_object_is_refused(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(item: Any) -> None:
        body = assert_bad_request(upload(ingress, "Customer", [{"id": "c-0", "name": "Ann"}, item]))
        assert record_errors(body, 1), body
        assert not record_errors(body, 0), body

    each_case({"string": "c-1", "number": 7, "null": None, "array": ["c-1"], "bool": True}, check)


# --- external id -------------------------------------------------------------------------------

def test_record_without_a_usable_external_id_is_refused(ingress: TestClient) -> None:
    # The id property accepts anything, so only the external-id rule can refuse these.
    create_definition(ingress, "Thing", "things",
                      {"type": "object", "properties": {"id": {}, "name": {"type": "string"}}, "required": ["id"]})

    def check(record: dict) -> None:
        body = assert_bad_request(upload(ingress, "Thing", [{"id": "ok", "name": "fine"}, record]))
        assert record_errors(body, 1), body
        assert not record_errors(body, 0), body

    each_case({
        "missing": {"name": "no id"},
        "null": {"id": None, "name": "null id"},
        "empty": {"id": "", "name": "empty id"},
        "float": {"id": 1.5, "name": "float id"},
        "bool": {"id": True, "name": "bool id"},
        "object": {"id": {"v": 1}, "name": "object id"},
        "array": {"id": ["a"], "name": "array id"},
    }, check)


def test_integer_external_id_is_accepted(ingress: TestClient) -> None:
    create_definition(ingress, "Counter", "counters",
                      {"type": "object", "properties": {"id": {"type": ["string", "integer"]},
                                                        "name": {"type": "string"}}, "required": ["id"]})
    data = assert_accepted(upload(ingress, "Counter", [{"id": 42, "name": "answer"}, {"id": "43"}]))
    assert data["recordCount"] == 2


# --- field rules (checked as a patch) ----------------------------------------------------------

def test_field_failing_its_type_is_refused_with_its_record_and_field_named(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(case: tuple[dict, str]) -> None:
        bad, field = case
        records = [{"id": "c-0", "name": "Ann"}, {"id": "c-1", "name": "Bob", **bad}]
        body = assert_bad_request(upload(ingress, "Customer", records))
        about_record = record_errors(body, 1)
        assert about_record, body
        assert any(field in e for e in about_record), body
        assert not record_errors(body, 0), body

    each_case({
        "age": ({"age": "old"}, "age"),
        "name": ({"name": 12}, "name"),
        "tags-not-array": ({"tags": "vip"}, "tags"),
        "tags-item": ({"tags": ["vip", 3]}, "tags"),
        "address-not-object": ({"address": "Oslo"}, "address"),
        "address.city": ({"address": {"city": 5}}, "city"),
        "address.zip": ({"address": {"city": "Oslo", "zip": 150}}, "zip"),
    }, check)


def test_null_on_a_required_field_is_refused(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(case: tuple[dict, str]) -> None:
        record, field = case
        body = assert_bad_request(upload(ingress, "Customer", [record]))
        about_record = record_errors(body, 0)
        assert about_record and any(field in e for e in about_record), body

    each_case({
        "top-level": ({"id": "c-1", "name": None}, "name"),
        "nested": ({"id": "c-1", "name": "Ann", "address": {"city": None}}, "city"),
        "nested-in-partial-record": ({"id": "c-1", "address": {"city": None, "zip": "0150"}}, "city"),
    }, check)


def test_null_on_an_optional_field_is_accepted(ingress: TestClient) -> None:
    create_definition(ingress)
    each_case({
        "age": {"id": "c-1", "name": "Ann", "age": None},
        "tags": {"id": "c-1", "name": "Ann", "tags": None},
        "address": {"id": "c-1", "name": "Ann", "address": None},
        "address.zip": {"id": "c-1", "address": {"zip": None}},
    }, lambda record: assert_accepted(upload(ingress, "Customer", [record])))


def test_required_fields_are_not_enforced_inside_an_upsert_record(ingress: TestClient) -> None:
    create_definition(ingress)

    def check(record: dict) -> None:
        assert_accepted(upload(ingress, "Customer", [record]))
        assert_accepted(upload(ingress, "Customer", [record], onconflict="upsert"))

    each_case({
        "only-id": {"id": "c-1"},
        "no-name": {"id": "c-1", "age": 40},
        "address-without-city": {"id": "c-1", "address": {"zip": "0150"}},
    }, check)


def test_unknown_field_is_refused_unless_ignored(ingress: TestClient) -> None:
    create_definition(ingress)
    records = [{"id": "c-1", "name": "Ann", "nickname": "A"}]
    for query in ({}, {"ignoreUnknownFields": "false"}):
        body = assert_bad_request(upload(ingress, "Customer", records, query=query))
        about_record = record_errors(body, 0)
        assert about_record and any("nickname" in e for e in about_record), body
    assert_accepted(upload(ingress, "Customer", records, ignoreUnknownFields="true"))


def test_reject_mode_refuses_a_record_that_is_not_a_complete_resource(ingress: TestClient) -> None:
    create_definition(ingress)
    incomplete = [{"id": "c-0", "name": "Ann"}, {"id": "c-1", "age": 30}]
    body = assert_bad_request(upload(ingress, "Customer", incomplete, onconflict="reject"))
    assert record_errors(body, 1) and not record_errors(body, 0), body
    nested = [{"id": "c-2", "name": "Cy", "address": {"zip": "0150"}}]
    body = assert_bad_request(upload(ingress, "Customer", nested, onconflict="reject"))
    assert record_errors(body, 0), body
    # Nulls are removed before the full-schema check: a null optional field is fine.
    complete = [{"id": "c-3", "name": "Di", "age": None, "address": {"city": "Oslo", "zip": None}}]
    assert_accepted(upload(ingress, "Customer", complete, onconflict="reject"))


def test_every_problem_of_a_request_is_listed_in_one_answer(ingress: TestClient) -> None:
    create_definition(ingress)
    records = [
        {"id": "c-0", "name": "Ann", "age": "old"},
        {"id": "c-1", "name": "Bob"},
        {"name": "no id"},
        {"id": "c-3", "name": "Cy"},
        {"id": "c-4", "name": None},
        {"id": "c-5", "name": "Di", "unknown": 1},
    ]
    body = assert_bad_request(upload(ingress, "Customer", records))
    for index in (0, 2, 4, 5):
        assert record_errors(body, index), f"no error about resources[{index}]: {body}"
    for index in (1, 3):
        assert not record_errors(body, index), body
    # One record with several problems: each is listed.
    body = assert_bad_request(upload(ingress, "Customer", [{"id": "c-9", "name": 1, "age": "x"}]))
    about_record = record_errors(body, 0)
    assert any("name" in e for e in about_record) and any("age" in e for e in about_record), body


# --- schema lookup -----------------------------------------------------------------------------

def assert_schema_not_found(response: Response) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["message"], str)
    assert isinstance(body["data"]["error"], str) and body["data"]["error"]


def test_unknown_schema_answers_404_with_the_seed_shape(ingress: TestClient) -> None:
    create_definition(ingress)
    assert_schema_not_found(upload(ingress, "Nope", VALID))
    assert_schema_not_found(upload(ingress, "00000000-0000-4000-8000-000000000000", VALID))


def test_schema_of_another_partner_answers_404(ingress: TestClient) -> None:
    definition_id = create_definition(ingress)
    other = tenant_headers("tenant-1", "partner-b")
    assert_schema_not_found(upload(ingress, "Customer", VALID, headers=other))
    assert_schema_not_found(upload(ingress, definition_id, VALID, headers=other))


def test_deactivated_schema_answers_404(ingress: TestClient) -> None:
    definition_id = create_definition(ingress)
    assert_accepted(upload(ingress, "Customer", VALID))
    response = ingress.delete(f"{DEFINITIONS}/{definition_id}", headers=partner_headers())
    assert response.status_code == 200, response.text
    for path in ("Customer", "customers", definition_id):
        assert_schema_not_found(upload(ingress, path, VALID))


# --- body size -----------------------------------------------------------------------------

def padded_body(size: int) -> bytes:
    """A valid upload body of exactly `size` bytes."""
    head = b'{"resources": [{"id": "c-1", "name": "'
    tail = b'"}]}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size and orjson.loads(body)
    return body


def test_body_above_the_configured_limit_answers_413(ingress: TestClient, settings: Settings) -> None:
    create_definition(ingress)
    response = post_raw(ingress, "Customer", padded_body(settings.max_body_bytes + 1))
    assert response.status_code == 413, response.text[:500]
    assert response.json()["success"] is False


def test_body_limit_is_exact(ingress: TestClient, settings: Settings) -> None:
    create_definition(ingress)
    limit = 4096
    with TestClient(create_app(replace(settings, max_body_bytes=limit, ingress_id=unique("ingress")))) as small:
        at_limit = post_raw(small, "Customer", padded_body(limit))
        assert at_limit.status_code == 202, at_limit.text
        over = post_raw(small, "Customer", padded_body(limit + 1))
        assert over.status_code == 413, over.text[:500]
        assert over.json()["success"] is False


# --- 202 -----------------------------------------------------------------------------------

def test_accepted_batch_answers_with_id_count_and_definition_id_for_any_path_spelling(ingress: TestClient) -> None:
    definition_id = create_definition(ingress)
    batch_ids = set()
    for path in (definition_id, "Customer", "customer", "CUSTOMER", "customers", "Customers", "CUSTOMERS"):
        response = upload(ingress, path, [{"id": "c-1", "name": "Ann"}, {"id": "c-2", "name": "Bob"}])
        data = assert_accepted(response)
        assert isinstance(response.json()["message"], str)
        assert isinstance(data["batchId"], str) and data["batchId"]
        assert isinstance(data["message"], str)
        assert data["recordCount"] == 2
        assert data["schemaDefinitionId"] == definition_id
        batch_ids.add(data["batchId"])
    assert len(batch_ids) == 7


def test_partner_token_uploads_for_the_tenant_it_names(ingress: TestClient) -> None:
    create_definition(ingress)
    headers = bearer(partner_token(), tenant="tenant-1")
    data = assert_accepted(upload(ingress, "Customer", VALID, headers=headers))
    status = ingress.get(f"/api/batches/{data['batchId']}", headers=tenant_headers("tenant-1"))
    assert status.status_code == 200, status.text


# --- with a worker: what a 400 or ignored field leaves behind ------------------------------------

def test_refused_request_enqueues_nothing(ingress: TestClient, worker: Any) -> None:
    create_definition(ingress)
    refused = [{"id": "n-1", "name": "from-refused-batch", "age": 1}, {"id": "n-2", "name": "x", "age": "old"}]
    assert_bad_request(upload(ingress, "Customer", refused))
    assert_bad_request(upload(ingress, "Customer", [{"id": "n-1", "name": "again"}], onconflict="bogus"))

    # Had n-1 been enqueued, `reject` would now fail with ALREADY_EXISTS.
    accepted = assert_accepted(upload(ingress, "Customer", [{"id": "n-1", "name": "good"}, {"id": "n-2", "name": "ok"}],
                                      onconflict="reject"))
    done = wait_terminal(ingress, accepted["batchId"], tenant_headers())
    assert done["status"] == "success", done
    assert done["progress"]["successfulRecords"] == 2

    resource = get_resource(ingress, "Customer", "n-1")
    assert resource.status_code == 200, resource.text
    assert resource.json()["data"]["result"]["data"] == {"id": "n-1", "name": "good"}

    listed = ingress.get("/api/batches", headers=tenant_headers())
    assert listed.status_code == 200, listed.text
    page = listed.json()["data"]
    assert [b["batchId"] for b in page["results"]] == [accepted["batchId"]]
    assert page["pagination"]["total"] == 1


def test_ignored_unknown_fields_are_never_saved(ingress: TestClient, worker: Any) -> None:
    create_definition(ingress)
    records = [{"id": "u-1", "name": "Ann", "nickname": "A", "address": {"city": "Oslo"}}]
    accepted = assert_accepted(upload(ingress, "Customer", records, ignoreUnknownFields="true"))
    done = wait_terminal(ingress, accepted["batchId"], tenant_headers())
    assert done["status"] == "success", done
    resource = get_resource(ingress, "Customer", "u-1")
    assert resource.status_code == 200, resource.text
    assert resource.json()["data"]["result"]["data"] == {"id": "u-1", "name": "Ann", "address": {"city": "Oslo"}}
