"""Batch status (docs/api.md §5) and per-record processing (§4 "Per record"), with a real worker."""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.testclient import TestClient

from tests.support import CUSTOMER_SCHEMA, TERMINAL, Response, bearer, partner_token, tenant_token, wait_terminal

DEFINITIONS = "/partner/schema-definitions"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
STATUSES = ("queued", "processing", *TERMINAL)



# --- local helpers -----------------------------------------------------------------------

def tenant_headers(tenant: str = "tenant-1", partner: str = "partner-a") -> dict[str, str]:
    return bearer(tenant_token(partner, tenant))


def create_customer_definition(client: TestClient) -> str:
    body = {"name": "Customer", "pluralName": "customers", "externalIdField": "id", "schema": CUSTOMER_SCHEMA}
    response = client.post(DEFINITIONS, json=body, headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def submit(client: TestClient, resources: list[dict[str, Any]], **query: str) -> str:
    """Upload to Customer; assert 202; return the batch id."""
    response = client.post("/api/resources/Customer/batch", json={"resources": resources}, params=query,
                           headers=tenant_headers())
    assert response.status_code == 202, response.text
    return response.json()["data"]["batchId"]


def run_batch(client: TestClient, resources: list[dict[str, Any]], **query: str) -> dict[str, Any]:
    """Upload and wait until the batch is terminal; return the batch."""
    return wait_terminal(client, submit(client, resources, **query), tenant_headers())


def resource(client: TestClient, external_id: str) -> Any:
    """The Customer (its JSON), or None when there is none."""
    response = client.get(f"/api/resources/Customer/{external_id}", headers=tenant_headers())
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def get_batch(client: TestClient, batch_id: str, headers: dict[str, str] | None = None) -> Response:
    return client.get(f"/api/batches/{batch_id}", headers=headers or tenant_headers())


def assert_counts_add_up(batch: dict[str, Any]) -> None:
    progress = batch["progress"]
    assert progress["processedRecords"] == progress["successfulRecords"] + progress["failedRecords"], batch
    if batch["status"] in TERMINAL:
        assert progress["pendingRecords"] == 0, batch
        assert progress["processedRecords"] == progress["totalRecords"], batch
    expected_rate = progress["successfulRecords"] / progress["totalRecords"] * 100
    assert abs(progress["successRate"] - expected_rate) < 0.01, batch


# --- a successful batch ------------------------------------------------------------------

def test_valid_batch_ends_success_with_complete_progress_and_timestamps(
        ingress: TestClient, second_ingress: TestClient, worker: Any) -> None:
    definition_id = create_customer_definition(ingress)
    records = [{"id": f"s-{i}", "name": f"n{i}", "age": i} for i in range(3)]
    batch_id = submit(ingress, records)

    # Answers at once, on any ingress instance, never 404.
    for name, client in (("ingress", ingress), ("second_ingress", second_ingress)):
        response = get_batch(client, batch_id)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["data"]["status"] in STATUSES

    batch = wait_terminal(ingress, batch_id, tenant_headers())
    assert batch["batchId"] == batch_id
    assert batch["status"] == "success", batch
    assert batch["batchType"] == "PARTNER_RESOURCE_JSON_INGEST"
    assert batch["schemaName"] == "Customer"
    assert batch["schemaDefinitionId"] == definition_id
    assert batch["progress"] == {"totalRecords": 3, "processedRecords": 3, "successfulRecords": 3,
                                 "failedRecords": 0, "pendingRecords": 0, "successRate": 100}
    for field in ("createdAt", "startedAt", "completedAt"):
        assert isinstance(batch[field], str) and TIMESTAMP.match(batch[field]), (field, batch[field])
    assert batch["createdAt"] <= batch["startedAt"] <= batch["completedAt"]
    # Batch objects are camelCase only (docs/api.md §1).
    assert not any("_" in key for key in batch), sorted(batch)

    # The terminal state is the same on the other instance.
    other = wait_terminal(second_ingress, batch_id, tenant_headers())
    assert other["status"] == "success" and other["progress"] == batch["progress"]


def test_batch_id_answers_200_at_once_on_another_ingress(ingress: TestClient, second_ingress: TestClient) -> None:
    # No worker: the batch cannot have moved on, yet it must be known everywhere at once.
    definition_id = create_customer_definition(ingress)
    for attempt in range(3):
        batch_id = submit(ingress, [{"id": f"r-{attempt}", "name": "x"}, {"id": "r-x", "name": "y"}])
        response = get_batch(second_ingress, batch_id)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["batchId"] == batch_id
        assert data["status"] in STATUSES
        assert data["progress"]["totalRecords"] == 2
        assert data["schemaDefinitionId"] == definition_id
    # The other way round too.
    batch_id = submit(second_ingress, [{"id": "r-9", "name": "z"}])
    response = get_batch(ingress, batch_id)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "queued"


def test_batch_of_another_tenant_or_partner_is_not_found(ingress: TestClient) -> None:
    create_customer_definition(ingress)
    batch_id = submit(ingress, [{"id": "t-1", "name": "x"}])
    assert get_batch(ingress, batch_id, bearer(partner_token(), tenant="tenant-1")).status_code == 200
    for headers in (tenant_headers("tenant-2"), tenant_headers("tenant-1", "partner-b"),
                    bearer(partner_token(), tenant="tenant-2"), bearer(partner_token("partner-b"), tenant="tenant-1")):
        response = get_batch(ingress, batch_id, headers)
        assert response.status_code == 404, response.text
        assert response.json()["success"] is False
    unknown = get_batch(ingress, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404, unknown.text


# --- upsert ------------------------------------------------------------------------------

def test_upsert_merges_like_rfc7396_and_keeps_identity(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    original = {"id": "m-1", "name": "Ann", "age": 30, "tags": ["a", "b"], "address": {"city": "Oslo", "zip": "0150"}}
    assert run_batch(ingress, [original])["status"] == "success"
    before = resource(ingress, "m-1")
    assert before is not None and before["data"] == original

    patch = {"id": "m-1", "age": None, "tags": ["c"], "address": {"zip": "0151"}}
    batch = run_batch(ingress, [patch])
    assert batch["status"] == "success", batch
    assert batch["progress"]["successfulRecords"] == 1

    after = resource(ingress, "m-1")
    assert after is not None
    assert after["data"] == {"id": "m-1", "name": "Ann", "tags": ["c"], "address": {"city": "Oslo", "zip": "0151"}}
    assert after["id"] == before["id"]
    assert after["createdAt"] == before["createdAt"]
    assert after["updatedAt"] > before["updatedAt"]

    # Deleting an optional object entirely; nulls are dropped on create.
    nulls = [{"id": "m-1", "address": None}, {"id": "m-2", "name": "Bo", "age": None}]
    assert run_batch(ingress, nulls)["status"] == "success"
    assert resource(ingress, "m-1")["data"] == {"id": "m-1", "name": "Ann", "tags": ["c"]}
    assert resource(ingress, "m-2")["data"] == {"id": "m-2", "name": "Bo"}


def test_record_whose_result_breaks_the_schema_fails_and_changes_nothing(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    # Create without a required field.
    batch = run_batch(ingress, [{"id": "v-1", "age": 3}])
    assert batch["status"] == "failed", batch
    assert batch["progress"]["failedRecords"] == 1 and batch["progress"]["successfulRecords"] == 0
    assert batch["errors"]["summary"] == {"VALIDATION_FAILED": 1}, batch["errors"]
    detail = batch["errors"]["details"]["0"]
    assert detail["externalId"] == "v-1" and detail["code"] == "VALIDATION_FAILED"
    assert isinstance(detail["message"], str) and detail["message"]
    assert resource(ingress, "v-1") is None

    # A merge that leaves a nested object without its required field.
    assert run_batch(ingress, [{"id": "v-2", "name": "Ann"}])["status"] == "success"
    before = resource(ingress, "v-2")
    batch = run_batch(ingress, [{"id": "v-2", "name": "Changed", "address": {"zip": "0150"}}])
    assert batch["status"] == "failed", batch
    assert batch["errors"]["details"]["0"]["code"] == "VALIDATION_FAILED"
    assert resource(ingress, "v-2") == before


# --- reject, mixed outcomes ----------------------------------------------------------------

def test_reject_on_existing_resource_fails_with_already_exists(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    assert run_batch(ingress, [{"id": "x-1", "name": "first"}])["status"] == "success"
    before = resource(ingress, "x-1")

    batch = run_batch(ingress, [{"id": "x-2", "name": "new"}, {"id": "x-1", "name": "second"}], onconflict="reject")
    assert batch["status"] == "partial_success", batch
    assert batch["progress"]["successfulRecords"] == 1 and batch["progress"]["failedRecords"] == 1
    assert batch["progress"]["successRate"] == 50
    assert batch["errors"]["summary"] == {"ALREADY_EXISTS": 1}, batch["errors"]
    assert set(batch["errors"]["details"]) == {"1"}, batch["errors"]
    detail = batch["errors"]["details"]["1"]
    assert set(detail) == {"externalId", "code", "message"}, detail
    assert detail["externalId"] == "x-1" and detail["code"] == "ALREADY_EXISTS"
    assert isinstance(detail["message"], str)
    assert_counts_add_up(batch)
    assert resource(ingress, "x-1") == before
    assert resource(ingress, "x-2")["data"] == {"id": "x-2", "name": "new"}


def test_batch_status_follows_its_outcomes_and_counts_add_up(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    some_fail = run_batch(ingress, [{"id": "p-1", "name": "ok"}, {"id": "p-2"}, {"id": "p-3", "name": "ok"},
                                    {"id": "p-4", "age": 1}])
    assert some_fail["status"] == "partial_success", some_fail
    assert some_fail["progress"]["successfulRecords"] == 2 and some_fail["progress"]["failedRecords"] == 2
    assert some_fail["progress"]["successRate"] == 50
    assert set(some_fail["errors"]["details"]) == {"1", "3"}, some_fail["errors"]
    assert {d["externalId"] for d in some_fail["errors"]["details"].values()} == {"p-2", "p-4"}
    assert sum(some_fail["errors"]["summary"].values()) == 2
    assert_counts_add_up(some_fail)

    all_fail = run_batch(ingress, [{"id": "p-1", "name": "again"}, {"id": "p-3", "name": "again"}], onconflict="reject")
    assert all_fail["status"] == "failed", all_fail
    assert all_fail["progress"]["successfulRecords"] == 0 and all_fail["progress"]["failedRecords"] == 2
    assert all_fail["progress"]["successRate"] == 0
    assert all_fail["errors"]["summary"] == {"ALREADY_EXISTS": 2}
    assert_counts_add_up(all_fail)

    three_of_four = run_batch(ingress, [{"id": f"q-{i}", "name": "n"} for i in range(3)] + [{"id": "q-9"}])
    assert three_of_four["status"] == "partial_success"
    assert three_of_four["progress"]["successRate"] == 75
    assert_counts_add_up(three_of_four)


# --- order per resource ----------------------------------------------------------------------

def test_records_of_one_resource_apply_in_order_within_a_batch(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    batch = run_batch(ingress, [
        {"id": "o-1", "name": "v1"},
        {"id": "o-2", "name": "w1"},
        {"id": "o-1", "name": "v2"},
        {"id": "o-1", "age": 7},          # only valid after the create above
        {"id": "o-2", "name": "w2"},
        {"id": "o-1", "name": "v3"},
        {"id": "o-3", "age": 1},          # fails: nothing to merge into yet
        {"id": "o-3", "name": "z"},       # then creates
    ])
    assert batch["progress"]["successfulRecords"] == 7, batch
    assert set(batch["errors"]["details"]) == {"6"}, batch["errors"]
    assert resource(ingress, "o-1")["data"] == {"id": "o-1", "name": "v3", "age": 7}
    assert resource(ingress, "o-2")["data"] == {"id": "o-2", "name": "w2"}
    assert resource(ingress, "o-3")["data"] == {"id": "o-3", "name": "z"}


def test_records_of_one_resource_apply_in_order_across_batches(
        ingress: TestClient, second_ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    # Sent back-to-back, without waiting: the second only succeeds after the first.
    first = submit(ingress, [{"id": "k-1", "name": "created"}])
    second = submit(ingress, [{"id": "k-1", "age": 5}])
    later = [submit(ingress if i % 2 else second_ingress, [{"id": "k-1", "name": f"n{i}"}]) for i in range(6)]
    for batch_id in (first, second, *later):
        batch = wait_terminal(ingress, batch_id, tenant_headers())
        assert batch["status"] == "success", batch
    assert resource(ingress, "k-1")["data"] == {"id": "k-1", "name": "n5", "age": 5}


# --- listing ---------------------------------------------------------------------------------

def test_batches_are_listed_newest_first_with_cursor_pagination(ingress: TestClient) -> None:
    create_customer_definition(ingress)
    ids = []
    for i in range(3):
        ids.append(submit(ingress, [{"id": f"l-{i}", "name": "x"}]))
        time.sleep(0.02)
    newest_first = list(reversed(ids))

    first = ingress.get("/api/batches", params={"limit": 2}, headers=tenant_headers())
    assert first.status_code == 200, first.text
    page = first.json()["data"]
    assert [b["batchId"] for b in page["results"]] == newest_first[:2]
    assert page["pagination"]["hasNextPage"] is True
    assert page["pagination"]["total"] == 3
    cursor = page["pagination"]["cursor"]
    assert isinstance(cursor, str) and cursor
    assert page["results"][0]["batchType"] == "PARTNER_RESOURCE_JSON_INGEST"
    assert "progress" in page["results"][0]

    second = ingress.get("/api/batches", params={"limit": 2, "cursor": cursor}, headers=tenant_headers())
    assert second.status_code == 200, second.text
    page = second.json()["data"]
    assert [b["batchId"] for b in page["results"]] == newest_first[2:]
    assert page["pagination"]["hasNextPage"] is False
    assert page["pagination"]["total"] == 3

    everything = ingress.get("/api/batches", headers=tenant_headers()).json()["data"]
    assert [b["batchId"] for b in everything["results"]] == newest_first
    assert everything["pagination"]["hasNextPage"] is False

    # Another tenant sees none of them.
    other = ingress.get("/api/batches", headers=tenant_headers("tenant-2"))
    assert other.status_code == 200, other.text
    assert other.json()["data"]["results"] == [] and other.json()["data"]["pagination"]["total"] == 0


def test_batch_list_limit_outside_1_to_100_is_refused(ingress: TestClient) -> None:
    for limit in ("0", "101", "-1", "ten"):
        response = ingress.get("/api/batches", params={"limit": limit}, headers=tenant_headers())
        assert response.status_code == 400, (limit, response.text)
        assert response.json()["success"] is False
    for limit in ("1", "100"):
        response = ingress.get("/api/batches", params={"limit": limit}, headers=tenant_headers())
        assert response.status_code == 200, (limit, response.text)
