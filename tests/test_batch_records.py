"""Per-record results: `GET /api/batches/{id}/records` pages (and streams as NDJSON) every
record's outcome, with a real worker on the session's broker."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.testclient import TestClient

from tests.support import CUSTOMER_SCHEMA, bearer, partner_token, tenant_token, wait_terminal, wait_until

DEFINITIONS = "/partner/schema-definitions"
NDJSON = "application/x-ndjson"


def tenant_headers(tenant: str = "tenant-1") -> dict[str, str]:
    return bearer(tenant_token("partner-a", tenant))


def define(client: TestClient, name: str, schema: dict[str, Any]) -> str:
    response = client.post(DEFINITIONS, json={"name": name, "externalIdField": "id", "schema": schema},
                           headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def submit(client: TestClient, schema: str, resources: list[dict[str, Any]], **query: str) -> str:
    response = client.post(f"/api/resources/{schema}/batch", json={"resources": resources}, params=query,
                           headers=tenant_headers())
    assert response.status_code == 202, response.text
    return response.json()["data"]["batchId"]


def records_page(client: TestClient, batch_id: str, **query: str) -> dict[str, Any]:
    response = client.get(f"/api/batches/{batch_id}/records", params=query, headers=tenant_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


def all_pages(client: TestClient, batch_id: str, **query: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Every record of the list, following cursors; and each page's `total`."""
    found: list[dict[str, Any]] = []
    totals = []
    cursor = None
    while True:
        page = records_page(client, batch_id, **query, **({"cursor": cursor} if cursor else {}))
        found.extend(page["results"])
        totals.append(page["pagination"]["total"])
        if not page["pagination"]["hasNextPage"]:
            assert page["pagination"]["cursor"] is None, page["pagination"]
            return found, totals
        cursor = page["pagination"]["cursor"]
        assert cursor, page["pagination"]


def test_every_records_outcome_pages_by_status_and_streams_as_ndjson(ingress: TestClient, worker: Any) -> None:
    define(ingress, "Customer", CUSTOMER_SCHEMA)
    assert wait_terminal(ingress, submit(ingress, "Customer", [{"id": "r-3", "name": "old"}]),
                         tenant_headers())["status"] == "success"
    # 1000 records: every 7th lacks its required name (fails), r-3 exists already (updated).
    records = [{"id": f"r-{i}", "age": i} if i % 7 == 0 else {"id": f"r-{i}", "name": f"n{i}"} for i in range(1000)]
    batch_id = submit(ingress, "Customer", records)
    batch = wait_terminal(ingress, batch_id, tenant_headers())
    failed_indexes = [i for i in range(1000) if i % 7 == 0]
    assert batch["progress"]["failedRecords"] == len(failed_indexes), batch["progress"]

    failed, totals = all_pages(ingress, batch_id, status="failed", limit="50")
    assert [r["index"] for r in failed] == failed_indexes
    assert set(totals) == {len(failed_indexes)}, totals
    assert all(r["status"] == "failed" and r["code"] == "VALIDATION_FAILED" and r["message"]
               and r["externalId"] == f"r-{r['index']}" for r in failed), failed[:3]

    succeeded, totals = all_pages(ingress, batch_id, status="succeeded", limit="300")
    assert [r["index"] for r in succeeded] == [i for i in range(1000) if i % 7], [r["index"] for r in succeeded][:20]
    assert set(totals) == {1000 - len(failed_indexes)}, totals
    assert {r["result"] for r in succeeded if r["index"] != 3} == {"created"}
    assert next(r for r in succeeded if r["index"] == 3)["result"] == "updated"
    assert all(r["externalId"] == f"r-{r['index']}" for r in succeeded)

    everything, totals = all_pages(ingress, batch_id, limit="1000")
    assert [r["index"] for r in everything] == list(range(1000)) and set(totals) == {1000}
    assert everything == sorted(failed + succeeded, key=lambda r: r["index"])
    first = records_page(ingress, batch_id)  # default limit: 100
    assert len(first["results"]) == 100 and first["pagination"]["hasNextPage"] is True

    response = ingress.get(f"/api/batches/{batch_id}/records", headers={**tenant_headers(), "Accept": NDJSON})
    assert response.status_code == 200 and response.headers["content-type"].startswith(NDJSON), response.headers
    lines = response.content.splitlines()
    assert [orjson.loads(line) for line in lines] == everything
    response = ingress.get(f"/api/batches/{batch_id}/records", params={"status": "failed"},
                           headers={**tenant_headers(), "Accept": NDJSON})
    assert [orjson.loads(line) for line in response.content.splitlines()] == failed


def test_pending_records_are_listed_while_the_batch_waits_then_as_succeeded(
        ingress: TestClient, worker: Any) -> None:
    customer = define(ingress, "Customer", CUSTOMER_SCHEMA)
    define(ingress, "Order", {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "customer": {"$ref": "reach:schemas/Customer"}}})
    batch_id = submit(ingress, "Order", [{"id": "o-1", "customer": "c-1"}, {"id": "o-2"}],
                      dependencyWaitTimeout="300")

    def pending_listed() -> list[dict[str, Any]] | None:
        listed = records_page(ingress, batch_id, status="pending")["results"]
        return listed or None

    pending = wait_until(pending_listed, 60, what="o-1 listed as pending",
                         seen=lambda: records_page(ingress, batch_id))
    assert len(pending) == 1 and pending[0]["index"] == 0 and pending[0]["externalId"] == "o-1", pending
    assert pending[0]["missingDependencies"] == [{"schemaDefinitionId": customer, "externalId": "c-1"}], pending
    assert pending[0]["expiresAt"].endswith("Z"), pending
    def both_listed() -> list[dict[str, Any]] | None:
        listed = records_page(ingress, batch_id)["results"]
        return listed if len(listed) == 2 else None

    # o-2 may be on another partition than o-1, its outcome in a later commit: waited for too.
    listed = wait_until(both_listed, 60, what="o-2 listed beside o-1", seen=lambda: records_page(ingress, batch_id))
    assert [(r["index"], r["status"]) for r in listed] == [(0, "pending"), (1, "succeeded")], listed

    submit(ingress, "Customer", [{"id": "c-1", "name": "Ann"}])
    assert wait_terminal(ingress, batch_id, tenant_headers())["status"] == "success"
    assert records_page(ingress, batch_id, status="pending")["results"] == []
    assert [(r["index"], r["status"], r["result"]) for r in records_page(ingress, batch_id)["results"]] == [
        (0, "succeeded", "created"), (1, "succeeded", "created")]


def test_records_of_an_unknown_or_foreign_batch_and_bad_queries_are_refused(ingress: TestClient) -> None:
    define(ingress, "Customer", CUSTOMER_SCHEMA)
    batch_id = submit(ingress, "Customer", [{"id": "x", "name": "X"}])
    url = f"/api/batches/{batch_id}/records"
    assert ingress.get(url, headers=tenant_headers("tenant-2")).status_code == 404
    assert ingress.get("/api/batches/no-such-batch/records", headers=tenant_headers()).status_code == 404
    for query, says in (({"status": "done"}, "status must be one of succeeded, failed, pending"),
                        ({"limit": "1001"}, "limit must be an integer from 1 to 1000"),
                        ({"cursor": "bm90LWEtbnVtYmVy"}, "cursor")):
        response = ingress.get(url, params=query, headers=tenant_headers())
        assert response.status_code == 400 and says in response.json()["message"], (query, response.text)
