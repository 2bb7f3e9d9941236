"""Resource reads (docs/api.md §6): one resource, lists with cursors, includes, and who may see what."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.testclient import TestClient

from tests.support import CUSTOMER_SCHEMA, Response, bearer, partner_token, tenant_token, wait_terminal

DEFINITIONS = "/partner/schema-definitions"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "customer": {"$ref": "reach:schemas/Customer"},
        "total": {"type": "number"},
    },
    "required": ["id"],
}

# camelCase -> snake_case of every field of a resource object (docs/api.md §6).
FIELD_PAIRS = {
    "schemaDefinitionId": "schema_definition_id",
    "platformId": "platform_id",
    "businessId": "business_id",
    "resourceExternalId": "resource_external_id",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
}


# --- local helpers -----------------------------------------------------------------------

def tenant_headers(tenant: str = "tenant-1", partner: str = "partner-a") -> dict[str, str]:
    return bearer(tenant_token(partner, tenant))


def create_definition(client: TestClient, name: str, plural: str | None, schema: dict[str, Any],
                      partner: str = "partner-a") -> str:
    body: dict[str, Any] = {"name": name, "externalIdField": "id", "schema": schema}
    if plural:
        body["pluralName"] = plural
    response = client.post(DEFINITIONS, json=body, headers=bearer(partner_token(partner)))
    assert response.status_code == 200, response.text
    return response.json()["data"]["id"]


def create_customer_definition(client: TestClient, partner: str = "partner-a") -> str:
    return create_definition(client, "Customer", "customers", CUSTOMER_SCHEMA, partner)


def load(client: TestClient, schema: str, resources: list[dict[str, Any]],
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Upload, wait until terminal; return the batch."""
    headers = headers or tenant_headers()
    response = client.post(f"/api/resources/{schema}/batch", json={"resources": resources}, headers=headers)
    assert response.status_code == 202, response.text
    return wait_terminal(client, response.json()["data"]["batchId"], headers)


def read(client: TestClient, schema: str, external_id: str, headers: dict[str, str] | None = None,
         **query: str) -> Response:
    return client.get(f"/api/resources/{schema}/{external_id}", params=query, headers=headers or tenant_headers())


def assert_not_found(response: Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["success"] is False


def assert_resource_shape(result: dict[str, Any]) -> None:
    assert uuid.UUID(result["id"]) and result["id"] == str(uuid.UUID(result["id"]))
    for camel, snake in FIELD_PAIRS.items():
        assert camel in result and snake in result, (camel, snake, sorted(result))
        assert result[camel] == result[snake], (camel, result[camel], result[snake])
    assert TIMESTAMP.match(result["createdAt"]) and TIMESTAMP.match(result["updatedAt"]), result
    assert result["createdAt"] <= result["updatedAt"]
    assert isinstance(result["data"], dict)


# --- one resource --------------------------------------------------------------------------

def test_resource_reads_with_every_field_in_both_cases(ingress: TestClient, worker: Any) -> None:
    definition_id = create_customer_definition(ingress)
    record = {"id": "c-1", "name": "Ann", "age": 30, "tags": ["vip"], "address": {"city": "Oslo", "zip": "0150"}}
    assert load(ingress, "Customer", [record])["status"] == "success"

    response = read(ingress, "Customer", "c-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"]["included"] == []
    result = body["data"]["result"]
    assert_resource_shape(result)
    assert result["schemaDefinitionId"] == definition_id
    assert result["platformId"] == "partner-a"
    assert result["businessId"] == "tenant-1"
    assert result["resourceExternalId"] == "c-1"
    assert result["data"] == record

    # The same resource by the definition's id, pluralName, any case, and with a partner token.
    for schema in (definition_id, "customers", "CUSTOMER", "Customers"):
        other = read(ingress, schema, "c-1")
        assert other.status_code == 200, (schema, other.text)
        assert other.json()["data"]["result"] == result
    as_partner = read(ingress, "Customer", "c-1", bearer(partner_token(), tenant="tenant-1"))
    assert as_partner.status_code == 200, as_partner.text
    assert as_partner.json()["data"]["result"] == result


def test_resource_is_invisible_outside_its_tenant_and_partner(ingress: TestClient, worker: Any) -> None:
    definition_id = create_customer_definition(ingress)
    create_customer_definition(ingress, partner="partner-b")  # same name, another partner
    assert load(ingress, "Customer", [{"id": "c-1", "name": "Ann"}])["status"] == "success"
    assert read(ingress, "Customer", "c-1").status_code == 200

    assert_not_found(read(ingress, "Customer", "c-404"))
    assert_not_found(read(ingress, "Customer", "c-1", tenant_headers("tenant-2")))
    assert_not_found(read(ingress, "Customer", "c-1", bearer(partner_token(), tenant="tenant-2")))
    assert_not_found(read(ingress, "Customer", "c-1", tenant_headers("tenant-1", "partner-b")))
    assert_not_found(read(ingress, definition_id, "c-1", tenant_headers("tenant-1", "partner-b")))
    assert_not_found(read(ingress, "NoSuchSchema", "c-1"))

    for headers in (tenant_headers("tenant-2"), tenant_headers("tenant-1", "partner-b")):
        listed = ingress.get("/api/resources/Customer", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"]["results"] == []
        assert listed.json()["data"]["pagination"]["total"] == 0

    # A deactivated definition is gone for reads too (docs/api.md §3).
    response = ingress.delete(f"{DEFINITIONS}/{definition_id}", headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    assert_not_found(read(ingress, "Customer", "c-1"))
    assert_not_found(ingress.get("/api/resources/Customer", headers=tenant_headers()))


# --- lists -----------------------------------------------------------------------------------

def test_resources_are_listed_with_cursor_pagination(ingress: TestClient, worker: Any) -> None:
    definition_id = create_customer_definition(ingress)
    ids = {f"c-{i}" for i in range(5)}
    assert load(ingress, "Customer", [{"id": i, "name": i} for i in sorted(ids)])["status"] == "success"
    # Another tenant's resources are not counted.
    other = load(ingress, "Customer", [{"id": "c-other", "name": "x"}], tenant_headers("tenant-2"))
    assert other["status"] == "success"

    seen: list[str] = []
    cursor: str | None = None
    pages = []
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = ingress.get("/api/resources/Customer", params=params, headers=tenant_headers())
        assert response.status_code == 200, response.text
        page = response.json()["data"]
        pages.append(len(page["results"]))
        assert page["pagination"]["total"] == 5, page["pagination"]
        for result in page["results"]:
            assert_resource_shape(result)
            assert result["schemaDefinitionId"] == definition_id and result["businessId"] == "tenant-1"
            assert result["data"] == {"id": result["resourceExternalId"], "name": result["resourceExternalId"]}
            seen.append(result["resourceExternalId"])
        if not page["pagination"]["hasNextPage"]:
            break
        cursor = page["pagination"]["cursor"]
        assert isinstance(cursor, str) and cursor
    assert pages == [2, 2, 1]
    assert sorted(seen) == sorted(ids)


def test_every_successful_record_is_readable_once_its_batch_is_terminal(
        ingress: TestClient, second_ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    records: list[dict[str, Any]] = [{"id": f"r-{i}", "name": f"n{i}", "age": i} for i in range(40)]
    records.insert(17, {"id": "r-failed", "age": 1})  # no name: fails on create
    batch = load(ingress, "Customer", records)
    assert batch["status"] == "partial_success", batch
    assert batch["progress"]["successfulRecords"] == 40
    # No polling: terminal means visible, on any ingress instance.
    for client in (ingress, second_ingress):
        for record in records:
            response = read(client, "Customer", record["id"])
            if record["id"] == "r-failed":
                assert_not_found(response)
            else:
                assert response.status_code == 200, (record["id"], response.text)
                assert response.json()["data"]["result"]["data"] == record


# --- include ---------------------------------------------------------------------------------

def test_include_returns_the_referenced_resource(ingress: TestClient, worker: Any) -> None:
    customer_id = create_customer_definition(ingress)
    create_definition(ingress, "Order", "orders", ORDER_SCHEMA)
    customers = [{"id": "c-1", "name": "Ann"}, {"id": "c-2", "name": "Bob"}]
    assert load(ingress, "Customer", customers)["status"] == "success"
    assert load(ingress, "Order", [{"id": "o-1", "customer": "c-1", "total": 9.5}])["status"] == "success"

    plain = read(ingress, "Order", "o-1")
    assert plain.status_code == 200, plain.text
    assert plain.json()["data"]["included"] == []
    assert plain.json()["data"]["result"]["data"] == {"id": "o-1", "customer": "c-1", "total": 9.5}

    response = read(ingress, "Order", "o-1", include="customer")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["result"]["resourceExternalId"] == "o-1"
    assert len(data["included"]) == 1, data["included"]
    included = data["included"][0]
    assert_resource_shape(included)
    assert included["resourceExternalId"] == "c-1"
    assert included["schemaDefinitionId"] == customer_id
    assert included["businessId"] == "tenant-1"
    assert included["data"] == {"id": "c-1", "name": "Ann"}
    assert included == read(ingress, "Customer", "c-1").json()["data"]["result"]


def test_include_of_a_field_that_is_not_a_reference_is_refused(ingress: TestClient, worker: Any) -> None:
    create_customer_definition(ingress)
    create_definition(ingress, "Order", "orders", ORDER_SCHEMA)
    assert load(ingress, "Customer", [{"id": "c-1", "name": "Ann"}])["status"] == "success"
    assert load(ingress, "Order", [{"id": "o-1", "customer": "c-1", "total": 1}])["status"] == "success"
    for field in ("total", "nosuchfield", "customer,total"):
        response = read(ingress, "Order", "o-1", include=field)
        assert response.status_code == 400, (field, response.text)
        assert response.json()["success"] is False
