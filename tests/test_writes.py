"""Patches and single-resource writes (API.md 6a), the batch-list filters (section 5), strict
query values and 405s: over HTTP, through the real pipeline (broker, worker)."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.testclient import TestClient

from tests.support import CUSTOMER_SCHEMA, bearer, partner_token, tenant_token, wait_terminal

DEFINITIONS = "/partner/schema-definitions"
HEADERS = bearer(tenant_token())


def _define(client: TestClient) -> None:
    for body in ({"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA},
                 {"name": "Order", "externalIdField": "id", "schema": {
                     "type": "object", "required": ["id"], "properties": {
                         "id": {"type": "string"}, "customer": {"$ref": "reach:schemas/Customer"},
                         "n": {"type": "integer"}}}}):
        response = client.post(DEFINITIONS, json=body, headers=bearer(partner_token()))
        assert response.status_code == 200, response.text


def _batch(client: TestClient, method: str, schema: str, resources: list[dict[str, Any]], **query: str) -> dict:
    response = client.request(method, f"/api/resources/{schema}/batch", json={"resources": resources},
                              params=query, headers=HEADERS)
    assert response.status_code == 202, response.text
    return wait_terminal(client, response.json()["data"]["batchId"], HEADERS)


def _resource(client: TestClient, schema: str, external_id: str) -> dict[str, Any] | None:
    response = client.get(f"/api/resources/{schema}/{external_id}", headers=HEADERS)
    return response.json()["data"]["result"] if response.status_code == 200 else None


def test_a_batch_patch_merges_into_existing_resources_and_never_creates(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": "c1", "name": "Ada", "age": 30, "address": {"city": "Paris"}},
                                         {"id": "c2", "name": "Bob"}])
    before = _resource(ingress, "Customer", "c1")
    batch = _batch(ingress, "PATCH", "Customer", [
        {"id": "c1", "age": None, "address": {"zip": "75001"}},       # merge, delete a field
        {"id": "nobody", "name": "Ghost"},                            # absent: a patch never creates
        {"id": "c2", "address": {"zip": "1000"}},                     # the result lacks address.city
    ])
    assert batch["batchType"] == "PARTNER_RESOURCE_BATCH_PATCH" and batch["status"] == "partial_success", batch
    details = batch["errors"]["details"]
    assert {k: v["code"] for k, v in details.items()} == {"1": "NOT_FOUND", "2": "VALIDATION_FAILED"}, details
    after = _resource(ingress, "Customer", "c1")
    assert after is not None and before is not None
    assert after["data"] == {"id": "c1", "name": "Ada", "address": {"city": "Paris", "zip": "75001"}}
    assert after["id"] == before["id"], "a patch keeps the resource's identity"
    assert _resource(ingress, "Customer", "nobody") is None
    assert _resource(ingress, "Customer", "c2")["data"] == {"id": "c2", "name": "Bob"}  # type: ignore[index]


def test_a_patch_with_a_missing_reference_fails_at_once_and_never_waits(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Order", [{"id": "o1", "n": 1}])
    # Even asked to wait, a patch does not: the option is not one of PATCH's.
    batch = _batch(ingress, "PATCH", "Order", [{"id": "o1", "customer": "missing"}], dependencyWaitTimeout="60")
    assert batch["errors"]["summary"] == {"MISSING_DEPENDENCY": 1}, batch
    assert batch["progress"]["pendingRecords"] == 0
    _batch(ingress, "POST", "Customer", [{"id": "c9", "name": "Cy"}])
    assert _batch(ingress, "PATCH", "Order", [{"id": "o1", "customer": "c9"}])["status"] == "success"
    assert _resource(ingress, "Order", "o1")["data"] == {"id": "o1", "n": 1, "customer": "c9"}  # type: ignore[index]


def test_a_batch_patch_is_refused_whole_for_what_an_upsert_would_be(ingress: TestClient) -> None:
    _define(ingress)
    response = ingress.patch("/api/resources/Customer/batch", headers=HEADERS, json={"resources": [
        {"name": "no id"}, {"id": "c1", "name": None}, {"id": "c2", "age": "old"}, {"id": "c3", "zip": 1}]})
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e.split(":")[0] for e in errors] == [
        "resources[0].id", "resources[1].name", "resources[2].age", "resources[3].zip"], errors
    listed = ingress.get("/api/batches", headers=HEADERS).json()["data"]
    assert listed["pagination"]["total"] == 0, "a refused patch enqueued something"


def test_single_resource_writes_answer_with_the_outcome(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    created = ingress.post("/api/resources/Customer", json={"data": {"id": "s1", "name": "Sam"}}, headers=HEADERS)
    assert created.status_code == 200, created.text
    resource = created.json()["data"]
    assert resource["resourceExternalId"] == "s1" and resource["data"] == {"id": "s1", "name": "Sam"}
    assert resource["resource_external_id"] == "s1"

    again = ingress.post("/api/resources/Customer", params={"onconflict": "reject"},
                         json={"data": {"id": "s1", "name": "Other"}}, headers=HEADERS)
    assert again.status_code == 409 and again.json()["data"]["code"] == "ALREADY_EXISTS", again.text
    merged = ingress.post("/api/resources/Customer", json={"data": {"id": "s1", "age": 4}}, headers=HEADERS)
    assert merged.status_code == 200 and merged.json()["data"]["data"]["age"] == 4, merged.text

    patched = ingress.patch("/api/resources/Customer/s1", json={"data": {"age": None, "tags": ["x"]}},
                            headers=HEADERS)
    assert patched.status_code == 200, patched.text
    body = patched.json()["data"]
    assert body["included"] == [] and body["result"]["data"] == {"id": "s1", "name": "Sam", "tags": ["x"]}
    assert body["result"]["id"] == resource["id"]

    absent = ingress.patch("/api/resources/Customer/nobody", json={"data": {"age": 1}}, headers=HEADERS)
    assert absent.status_code == 404 and absent.json()["data"]["code"] == "NOT_FOUND", absent.text
    other = ingress.patch("/api/resources/Customer/s1", json={"data": {"id": "s2", "age": 1}}, headers=HEADERS)
    assert other.status_code == 400 and "s2" in other.json()["message"], other.text
    invalid = ingress.post("/api/resources/Customer", json={"data": {"id": "s3"}}, headers=HEADERS)
    assert invalid.status_code == 400 and invalid.json()["data"]["code"] == "VALIDATION_FAILED", invalid.text
    assert invalid.json()["errors"][0].startswith("data"), invalid.text
    missing = ingress.post("/api/resources/Order", json={"data": {"id": "o1", "customer": "nobody"}}, headers=HEADERS)
    assert missing.status_code == 400 and missing.json()["data"]["code"] == "MISSING_DEPENDENCY", missing.text
    refused = ingress.post("/api/resources/Customer", json={"data": {"id": "s4", "name": 5}}, headers=HEADERS)
    assert refused.status_code == 400 and refused.json()["errors"] == ['data.name: 5 is not of type "string"']
    for bad in (b"[]", b"{}", b'{"data": 1}', b"not json"):
        response = ingress.post("/api/resources/Customer", content=bad, headers=HEADERS)
        assert response.status_code == 400, (bad, response.text)

    # Each write was a one-record batch of its type.
    types = [b["batchType"] for b in ingress.get("/api/batches", params={"limit": "100"},
                                                 headers=HEADERS).json()["data"]["results"]]
    assert types.count("PARTNER_RESOURCE_BATCH_PATCH") == 2 and types.count("PARTNER_RESOURCE_JSON_INGEST") == 5


def test_a_single_write_whose_outcome_is_late_answers_202_with_its_batch(settings: Any, ingress: TestClient) -> None:
    """No worker runs: the outcome cannot be known within REACH_SYNC_WAIT_S."""
    _define(ingress)
    ingress.app.state.settings = settings.__class__(**{**settings.__dict__, "sync_wait_s": 0.5})
    response = ingress.post("/api/resources/Customer", json={"data": {"id": "late", "name": "L"}}, headers=HEADERS)
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["recordCount"] == 1 and ingress.get(f"/api/batches/{data['batchId']}", headers=HEADERS).json()[
        "data"]["status"] == "queued"


def test_batch_lists_filter_by_type_and_status(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    upload = _batch(ingress, "POST", "Customer", [{"id": "f1", "name": "F"}])
    patch = _batch(ingress, "PATCH", "Customer", [{"id": "f1", "age": 2}])
    failed = _batch(ingress, "PATCH", "Customer", [{"id": "nobody", "age": 2}])

    def ids(**query: str) -> list[str]:
        response = ingress.get("/api/batches", params=query, headers=HEADERS)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["pagination"]["total"] == len(data["results"])
        return [b["batchId"] for b in data["results"]]

    assert ids() == [failed["batchId"], patch["batchId"], upload["batchId"]]
    assert ids(batchType="PARTNER_RESOURCE_BATCH_PATCH") == [failed["batchId"], patch["batchId"]]
    assert ids(batchType="PARTNER_RESOURCE_JSON_INGEST", status="success") == [upload["batchId"]]
    assert ids(status="failed") == [failed["batchId"]]
    assert ids(batchType="PARTNER_RESOURCE_BATCH_DELETE") == []
    for query in ({"batchType": "UPLOAD"}, {"batchType": ""}, {"status": "done"}, {"limit": ""}):
        response = ingress.get("/api/batches", params=query, headers=HEADERS)
        assert response.status_code == 400, (query, response.text)


def test_query_values_are_strict_and_405_names_the_allowed_methods(ingress: TestClient) -> None:
    _define(ingress)
    for query in ({"onconflict": ""}, {"onconflict": "UPSERT"}, {"ignoreUnknownFields": ""},
                  {"dependencyWaitTimeout": ""}, {"dependencyWaitTimeout": "²"}, {"dependencyWaitTimeout": "-1"}):
        response = ingress.post("/api/resources/Customer/batch", params=query, headers=HEADERS,
                                json={"resources": [{"id": "q", "name": "Q"}]})
        assert response.status_code == 400, (query, response.text)
    response = ingress.patch("/api/resources/Customer/batch", params={"ignoreUnknownFields": "yes"},
                             headers=HEADERS, json={"resources": [{"id": "q", "name": "Q"}]})
    assert response.status_code == 400, response.text
    response = ingress.get("/api/batches/x", params={"includePendingDetails": "1"}, headers=HEADERS)
    assert response.status_code == 400, response.text

    def allow(response: httpx.Response) -> set[str]:
        assert response.status_code == 405, response.text
        return set(response.headers["allow"].split(", "))

    assert allow(ingress.put("/api/resources/Customer/batch", json={})) >= {"POST", "PATCH"}
    assert allow(ingress.delete("/api/batches")) == {"GET", "HEAD"}
    assert allow(ingress.put("/api/resources/Customer")) == {"GET", "HEAD", "POST"}
