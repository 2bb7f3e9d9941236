"""Schema definitions (docs/api.md §3) over real HTTP, with the envelope of §1 and partner isolation (§2)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import jwt  # noqa: F401  (for the warning filter)
import pytest
from starlette.testclient import TestClient

from ingest.app import create_app
from reach.config import Settings
from tests.support import bearer, partner_token

BASE = "/partner/schema-definitions"

# The test secrets are short on purpose; PyJWT warns about that.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# camelCase -> snake_case of every field of a schema-definition object (docs/api.md §3 "Response data").
FIELD_PAIRS = {
    "platformId": "platform_id",
    "pluralName": "plural_name",
    "externalIdField": "external_id_field",
    "referenceSchemas": "reference_schemas",
    "versionNumber": "version_number",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "deactivatedAt": "deactivated_at",
}


# --- local helpers -----------------------------------------------------------------------

def auth(partner: str = "partner-a") -> dict[str, str]:
    return bearer(partner_token(partner))


def object_schema(id_field: str = "id", **properties: Any) -> dict:
    """A draft-07 object schema whose `id_field` is a required string, plus `properties`."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {id_field: {"type": "string"}, **properties},
        "required": [id_field],
    }


def definition(name: str, **overrides: Any) -> dict:
    body: dict[str, Any] = {"name": name, "description": f"{name} records", "externalIdField": "id",
                            "schema": object_schema()}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def create(client: TestClient, body: dict, partner: str = "partner-a") -> dict:
    """Create a definition that must be accepted; return its data."""
    response = client.post(BASE, json=body, headers=auth(partner))
    assert response.status_code == 200, (response.status_code, response.text)
    payload = response.json()
    assert payload["success"] is True, payload
    return payload["data"]


def get(client: TestClient, id_or_name: str, partner: str = "partner-a"):
    return client.get(f"{BASE}/{id_or_name}", headers=auth(partner))


def listed(client: TestClient, partner: str = "partner-a") -> list[dict]:
    response = client.get(BASE, headers=auth(partner))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert isinstance(body["data"], list), body
    return body["data"]


def update(client: TestClient, id_or_name: str, body: dict, partner: str = "partner-a"):
    return client.post(f"{BASE}/{id_or_name}", json=body, headers=auth(partner))


def deactivate(client: TestClient, id_or_name: str, partner: str = "partner-a"):
    return client.delete(f"{BASE}/{id_or_name}", headers=auth(partner))


def ref(target: str) -> dict:
    return {"$ref": f"reach:schemas/{target}"}


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["success"] is False, body
    assert isinstance(body.get("message"), str) and body["message"].strip(), body
    if "errors" in body:
        assert isinstance(body["errors"], list) and all(isinstance(e, str) for e in body["errors"]), body
    return body


def assert_not_found(response) -> None:
    """404 of an unknown schema definition keeps the seed's shape (docs/api.md §1)."""
    body = assert_error(response, 404)
    assert isinstance(body.get("data"), dict), body
    assert isinstance(body["data"].get("error"), str) and body["data"]["error"].strip(), body


def error_text(body: dict) -> str:
    return " ".join([body.get("message", ""), *body.get("errors", [])])


# --- create ------------------------------------------------------------------------------

def test_create_returns_the_definition_in_camel_and_snake_case(ingress: TestClient) -> None:
    schema = object_schema("customerId", email={"type": "string"})
    data = create(ingress, definition("Customer", pluralName="Customers", externalIdField="customerId",
                                      description="People who buy", schema=schema))

    assert str(uuid.UUID(data["id"])) == data["id"].lower()
    assert data["platformId"] == "partner-a"
    assert data["name"] == "Customer"
    assert data["pluralName"] == "Customers"
    assert data["description"] == "People who buy"
    assert data["category"] == "custom_schema"
    assert data["externalIdField"] == "customerId"
    assert data["schema"] == schema
    assert data["referenceSchemas"] == []
    assert data["versionNumber"] == 1
    assert TIMESTAMP.match(data["createdAt"]), data["createdAt"]
    assert TIMESTAMP.match(data["updatedAt"]), data["updatedAt"]
    assert data["deactivatedAt"] is None
    for camel, snake in FIELD_PAIRS.items():
        assert snake in data, f"missing snake_case field {snake}"
        assert data[snake] == data[camel], (camel, snake)


def test_create_keeps_original_capitalisation_of_name(ingress: TestClient) -> None:
    data = create(ingress, definition("shipping-Method_2023", pluralName="shipping-Methods"))
    assert data["name"] == "shipping-Method_2023"
    assert data["pluralName"] == "shipping-Methods"


def test_create_accepts_snake_case_aliases(ingress: TestClient) -> None:
    body = {"name": "Order", "plural_name": "Orders", "external_id_field": "orderId",
            "description": "orders", "schema": object_schema("orderId")}
    data = create(ingress, body)
    assert data["pluralName"] == data["plural_name"] == "Orders"
    assert data["externalIdField"] == data["external_id_field"] == "orderId"


@pytest.mark.parametrize("category", ["contacts_schema", "transactions_schema", "custom_schema",
                                      "combined_schema", "locations_schema", "customer_fields"])
def test_create_keeps_a_given_category(ingress: TestClient, category: str) -> None:
    assert create(ingress, definition("Thing", category=category))["category"] == category


def test_create_rejects_unknown_category(ingress: TestClient) -> None:
    assert_error(ingress.post(BASE, json=definition("Thing", category="user_schema"), headers=auth()), 400)
    assert listed(ingress) == []


def test_fields_to_expose_and_expose_name_json_path_round_trip(ingress: TestClient) -> None:
    fields = [{"name": "email", "description": "Email", "jsonPath": "$.email", "exposure": ["segments"]}]
    data = create(ingress, definition("Contact", schema=object_schema(email={"type": "string"}),
                                      fieldsToExpose=fields, exposeNameJsonPath="$.email"))
    assert data["fieldsToExpose"] == fields
    assert data["fields_to_expose"] == fields
    assert data["exposeNameJsonPath"] == "$.email"
    assert data["expose_name_json_path"] == "$.email"
    again = get(ingress, data["id"]).json()["data"]
    assert again["fieldsToExpose"] == fields and again["exposeNameJsonPath"] == "$.email"


@pytest.mark.parametrize("missing", ["name", "externalIdField", "schema"])
def test_create_without_a_required_field_is_400(ingress: TestClient, missing: str) -> None:
    body = definition("Thing")
    del body[missing]
    assert_error(ingress.post(BASE, json=body, headers=auth()), 400)
    assert listed(ingress) == []


def test_create_with_a_body_that_is_not_json_is_400(ingress: TestClient) -> None:
    response = ingress.post(BASE, content=b"{not json", headers={**auth(), "Content-Type": "application/json"})
    assert_error(response, 400)


def test_create_with_a_body_that_is_not_an_object_is_400(ingress: TestClient) -> None:
    assert_error(ingress.post(BASE, json=[definition("Thing")], headers=auth()), 400)


@pytest.mark.parametrize("bad_name", ["Order Items", "R&D", "it's", "", "caf\u00e9", "a/b"])
def test_invalid_name_is_400(ingress: TestClient, bad_name: str) -> None:
    assert_error(ingress.post(BASE, json=definition(bad_name), headers=auth()), 400)
    assert listed(ingress) == []


@pytest.mark.parametrize("bad_plural", ["Order Items", "R&D"])
def test_invalid_plural_name_is_400(ingress: TestClient, bad_plural: str) -> None:
    assert_error(ingress.post(BASE, json=definition("Order", pluralName=bad_plural), headers=auth()), 400)
    assert listed(ingress) == []


# --- uniqueness --------------------------------------------------------------------------

def test_duplicate_name_ignoring_case_is_409(ingress: TestClient) -> None:
    create(ingress, definition("Order"))
    assert_error(ingress.post(BASE, json=definition("ORDER"), headers=auth()), 409)
    assert [d["name"] for d in listed(ingress)] == ["Order"]


def test_name_equal_to_another_definitions_plural_name_is_409(ingress: TestClient) -> None:
    create(ingress, definition("Person", pluralName="People"))
    assert_error(ingress.post(BASE, json=definition("people"), headers=auth()), 409)


def test_plural_name_equal_to_another_definitions_name_is_409(ingress: TestClient) -> None:
    create(ingress, definition("Item"))
    assert_error(ingress.post(BASE, json=definition("Thing", pluralName="ITEM"), headers=auth()), 409)


def test_plural_name_equal_to_another_definitions_plural_name_is_409(ingress: TestClient) -> None:
    create(ingress, definition("Goose", pluralName="Geese"))
    assert_error(ingress.post(BASE, json=definition("Gander", pluralName="geese"), headers=auth()), 409)


def test_name_of_a_deactivated_definition_can_be_reused(ingress: TestClient) -> None:
    old = create(ingress, definition("Order"))
    assert deactivate(ingress, old["id"]).status_code == 200
    new = create(ingress, definition("order"))
    assert new["id"] != old["id"]
    assert get(ingress, "ORDER").json()["data"]["id"] == new["id"]


# --- schema rules ------------------------------------------------------------------------

@pytest.mark.parametrize("schema", [
    pytest.param({"type": 12, "properties": {"id": {"type": "string"}}, "required": ["id"]}, id="type-not-a-type"),
    pytest.param({"type": "object", "properties": {"id": {"type": "strang"}}, "required": ["id"]},
                 id="bad-property-type"),
    pytest.param({"type": "object", "properties": {"id": {"type": "string"}}, "required": "id"},
                 id="required-not-array"),
    pytest.param({"type": "object", "properties": {"id": {"type": "string", "minLength": -1}}, "required": ["id"]},
                 id="negative-minLength"),
    pytest.param("not an object", id="schema-is-a-string"),
], )
def test_schema_that_is_not_valid_draft07_is_400(ingress: TestClient, schema: Any) -> None:
    assert_error(ingress.post(BASE, json=definition("Thing", schema=schema), headers=auth()), 400)
    assert listed(ingress) == []


@pytest.mark.parametrize("schema", [
    pytest.param({"type": "array", "items": {"type": "string"}}, id="array"),
    pytest.param({"type": "string"}, id="string"),
    pytest.param({"properties": {"id": {"type": "string"}}, "required": ["id"]}, id="no-type"),
])
def test_schema_not_of_type_object_is_400(ingress: TestClient, schema: dict) -> None:
    assert_error(ingress.post(BASE, json=definition("Thing", schema=schema), headers=auth()), 400)


def test_external_id_field_not_in_required_is_400(ingress: TestClient) -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "sku": {"type": "string"}},
              "required": ["sku"]}
    body = assert_error(ingress.post(BASE, json=definition("Thing", schema=schema), headers=auth()), 400)
    assert "id" in error_text(body)


def test_external_id_field_not_among_properties_is_400(ingress: TestClient) -> None:
    schema = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku", "code"]}
    body = definition("Thing", externalIdField="code", schema=schema)
    assert_error(ingress.post(BASE, json=body, headers=auth()), 400)


def test_custom_keyword_x_pii_type_is_accepted_and_kept(ingress: TestClient) -> None:
    schema = object_schema("customerId", email={"type": "string", "x-pii-type": "EMAIL"})
    schema["properties"]["customerId"]["x-pii-type"] = "EXTERNAL_ID"
    data = create(ingress, definition("Customer", externalIdField="customerId", schema=schema))
    assert data["schema"]["properties"]["email"]["x-pii-type"] == "EMAIL"
    assert get(ingress, "Customer").json()["data"]["schema"] == schema


def test_ordinary_local_refs_keep_working(ingress: TestClient) -> None:
    schema = object_schema(address={"$ref": "#/definitions/address"})
    schema["definitions"] = {"address": {"type": "object", "properties": {"city": {"type": "string"}}}}
    data = create(ingress, definition("Shop", schema=schema))
    assert data["schema"] == schema
    assert data["referenceSchemas"] == []


# --- references --------------------------------------------------------------------------

def test_ref_to_an_existing_definition_by_name_ignoring_case_is_listed_in_reference_schemas(
        ingress: TestClient) -> None:
    customer = create(ingress, definition("Customer"))
    order = create(ingress, definition("Order", schema=object_schema(customerId=ref("customer"))))
    assert order["referenceSchemas"] == [customer["id"]]
    assert order["reference_schemas"] == [customer["id"]]
    assert get(ingress, "Order").json()["data"]["referenceSchemas"] == [customer["id"]]


def test_ref_by_id_and_by_plural_name_are_accepted(ingress: TestClient) -> None:
    customer = create(ingress, definition("Customer", pluralName="Customers"))
    by_id = create(ingress, definition("Order", schema=object_schema(customerId=ref(customer["id"]))))
    by_plural = create(ingress, definition("Invoice", schema=object_schema(customerId=ref("CUSTOMERS"))))
    assert by_id["referenceSchemas"] == [customer["id"]]
    assert by_plural["referenceSchemas"] == [customer["id"]]


def test_array_of_refs_counts_as_a_reference(ingress: TestClient) -> None:
    tag = create(ingress, definition("Tag"))
    post = create(ingress, definition("Post", schema=object_schema(tags={"type": "array", "items": ref("Tag")})))
    assert post["referenceSchemas"] == [tag["id"]]


def test_several_references_are_all_listed(ingress: TestClient) -> None:
    customer = create(ingress, definition("Customer"))
    location = create(ingress, definition("Location"))
    schema = object_schema(customerId=ref("Customer"), locationId=ref("Location"))
    tx = create(ingress, definition("Transaction", schema=schema))
    assert sorted(tx["referenceSchemas"]) == sorted([customer["id"], location["id"]])


def test_ref_to_an_unknown_definition_is_400(ingress: TestClient) -> None:
    body = definition("Order", schema=object_schema(customerId=ref("Customer")))
    assert_error(ingress.post(BASE, json=body, headers=auth()), 400)
    assert listed(ingress) == []


def test_array_ref_to_an_unknown_definition_is_400(ingress: TestClient) -> None:
    body = definition("Post", schema=object_schema(tags={"type": "array", "items": ref("Tag")}))
    assert_error(ingress.post(BASE, json=body, headers=auth()), 400)


def test_ref_to_a_definition_of_another_partner_is_400(ingress: TestClient) -> None:
    theirs = create(ingress, definition("Customer"), partner="partner-b")
    by_name = definition("Order", schema=object_schema(customerId=ref("Customer")))
    by_id = definition("Invoice", schema=object_schema(customerId=ref(theirs["id"])))
    assert_error(ingress.post(BASE, json=by_name, headers=auth("partner-a")), 400)
    assert_error(ingress.post(BASE, json=by_id, headers=auth("partner-a")), 400)
    assert listed(ingress, "partner-a") == []


def test_ref_to_a_deactivated_definition_is_400(ingress: TestClient) -> None:
    customer = create(ingress, definition("Customer"))
    assert deactivate(ingress, customer["id"]).status_code == 200
    body = definition("Order", schema=object_schema(customerId=ref("Customer")))
    assert_error(ingress.post(BASE, json=body, headers=auth()), 400)


def test_self_reference_is_allowed(ingress: TestClient) -> None:
    data = create(ingress, definition("Employee", schema=object_schema(managerId=ref("employee"))))
    assert data["name"] == "Employee"


def test_self_reference_through_plural_name_is_allowed(ingress: TestClient) -> None:
    body = definition("Employee", pluralName="Employees", schema=object_schema(reports={"type": "array",
                                                                                       "items": ref("Employees")}))
    create(ingress, body)


# --- list and get ------------------------------------------------------------------------

def test_list_returns_only_the_partners_active_definitions(ingress: TestClient) -> None:
    a1 = create(ingress, definition("Customer"))
    a2 = create(ingress, definition("Order"))
    gone = create(ingress, definition("Legacy"))
    create(ingress, definition("Secret"), partner="partner-b")
    assert deactivate(ingress, gone["id"]).status_code == 200

    items = listed(ingress)
    assert sorted(d["id"] for d in items) == sorted([a1["id"], a2["id"]])
    assert all(d["platformId"] == "partner-a" and d["deactivatedAt"] is None for d in items)
    by_id = {d["id"]: d for d in items}
    assert by_id[a1["id"]] == a1


@pytest.mark.parametrize("key", ["id", "ID", "name", "NAME", "lower-name", "pluralName", "PLURALNAME", "lower-plural"])
def test_get_by_id_name_or_plural_name_ignoring_case(ingress: TestClient, key: str) -> None:
    data = create(ingress, definition("Customer", pluralName="Customers"))
    path = {
        "id": data["id"], "ID": data["id"].upper(),
        "name": "Customer", "NAME": "CUSTOMER", "lower-name": "customer",
        "pluralName": "Customers", "PLURALNAME": "CUSTOMERS", "lower-plural": "customers",
    }[key]
    response = get(ingress, path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == data


def test_get_unknown_definition_is_404(ingress: TestClient) -> None:
    assert_not_found(get(ingress, "Nothing"))
    assert_not_found(get(ingress, str(uuid.uuid4())))


# --- update ------------------------------------------------------------------------------

def test_updating_description_keeps_the_version(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    response = update(ingress, "customer", {"description": "Buyers, updated"})
    assert response.status_code == 200, response.text
    updated = response.json()["data"]
    assert updated["id"] == data["id"]
    assert updated["description"] == "Buyers, updated"
    assert updated["versionNumber"] == updated["version_number"] == 1
    assert updated["schema"] == data["schema"]
    assert updated["createdAt"] == data["createdAt"]
    assert TIMESTAMP.match(updated["updatedAt"]) and updated["updatedAt"] >= data["updatedAt"]
    assert get(ingress, data["id"]).json()["data"]["description"] == "Buyers, updated"


def test_updating_schema_increments_the_version_each_time(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    schema2 = object_schema(email={"type": "string"})
    r2 = update(ingress, data["id"], {"schema": schema2})
    assert r2.status_code == 200, r2.text
    assert r2.json()["data"]["versionNumber"] == 2
    assert r2.json()["data"]["schema"] == schema2

    schema3 = object_schema(email={"type": "string"}, phone={"type": "string"})
    r3 = update(ingress, "CUSTOMER", {"schema": schema3})
    assert r3.status_code == 200, r3.text
    assert r3.json()["data"]["versionNumber"] == r3.json()["data"]["version_number"] == 3

    current = get(ingress, data["id"]).json()["data"]
    assert current["versionNumber"] == 3 and current["schema"] == schema3


def test_updating_fields_to_expose_keeps_the_version(ingress: TestClient) -> None:
    create(ingress, definition("Contact", schema=object_schema(email={"type": "string"})))
    fields = [{"name": "email", "description": "Email", "jsonPath": "$.email", "exposure": ["segments"]}]
    response = update(ingress, "Contact", {"fieldsToExpose": fields, "exposeNameJsonPath": "$.email"})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["fieldsToExpose"] == fields and data["exposeNameJsonPath"] == "$.email"
    assert data["versionNumber"] == 1


@pytest.mark.parametrize("change", [
    {"name": "Client"}, {"pluralName": "Clients"}, {"plural_name": "Clients"},
    {"category": "contacts_schema"}, {"externalIdField": "email"}, {"external_id_field": "email"},
], ids=lambda c: next(iter(c)))
def test_immutable_fields_cannot_change(ingress: TestClient, change: dict) -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "email": {"type": "string"}},
              "required": ["id", "email"]}
    data = create(ingress, definition("Customer", pluralName="Customers", schema=schema))
    assert_error(update(ingress, data["id"], change), 400)
    assert get(ingress, data["id"]).json()["data"] == data


def test_update_with_an_invalid_schema_is_400_and_changes_nothing(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    assert_error(update(ingress, data["id"], {"schema": {"type": 12}}), 400)
    assert_error(update(ingress, data["id"], {"schema": {"type": "array"}}), 400)
    assert get(ingress, data["id"]).json()["data"] == data


def test_update_dropping_external_id_field_from_required_is_400(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    schema = {"type": "object", "properties": {"id": {"type": "string"}}}
    assert_error(update(ingress, data["id"], {"schema": schema}), 400)
    assert get(ingress, data["id"]).json()["data"]["versionNumber"] == 1


def test_update_adding_a_reference_recomputes_reference_schemas(ingress: TestClient) -> None:
    customer = create(ingress, definition("Customer"))
    order = create(ingress, definition("Order"))
    assert order["referenceSchemas"] == []
    response = update(ingress, "Order", {"schema": object_schema(customerId=ref("Customer"))})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["referenceSchemas"] == [customer["id"]]
    # The new reference now protects the target from deactivation.
    assert_error(deactivate(ingress, "Customer"), 409)


def test_update_with_a_reference_to_an_unknown_definition_is_400(ingress: TestClient) -> None:
    order = create(ingress, definition("Order"))
    assert_error(update(ingress, "Order", {"schema": object_schema(customerId=ref("Customer"))}), 400)
    assert get(ingress, "Order").json()["data"] == order


def test_update_of_unknown_definition_is_404(ingress: TestClient) -> None:
    assert_not_found(update(ingress, "Nothing", {"description": "x"}))


# --- deactivation ------------------------------------------------------------------------

def test_deactivated_definition_is_gone(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer", pluralName="Customers"))
    response = deactivate(ingress, "customers")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    gone = body["data"]
    assert gone["id"] == data["id"]
    assert TIMESTAMP.match(gone["deactivatedAt"]), gone
    assert gone["deactivated_at"] == gone["deactivatedAt"]

    for key in (data["id"], "Customer", "customers"):
        assert_not_found(get(ingress, key))
    assert listed(ingress) == []
    assert_not_found(update(ingress, data["id"], {"description": "again"}))
    assert_not_found(deactivate(ingress, data["id"]))


def test_deactivating_unknown_definition_is_404(ingress: TestClient) -> None:
    assert_not_found(deactivate(ingress, "Nothing"))


def test_referenced_definition_cannot_be_deactivated_until_referrer_is(ingress: TestClient) -> None:
    create(ingress, definition("Customer"))
    create(ingress, definition("Order", schema=object_schema(customerId=ref("Customer"))))

    assert_error(deactivate(ingress, "Customer"), 409)
    assert get(ingress, "Customer").status_code == 200

    assert deactivate(ingress, "Order").status_code == 200
    response = deactivate(ingress, "Customer")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["deactivatedAt"] is not None


def test_definition_referenced_through_array_items_cannot_be_deactivated(ingress: TestClient) -> None:
    create(ingress, definition("Tag"))
    create(ingress, definition("Post", schema=object_schema(tags={"type": "array", "items": ref("Tag")})))
    assert_error(deactivate(ingress, "Tag"), 409)


def test_reference_dropped_by_update_no_longer_blocks_deactivation(ingress: TestClient) -> None:
    create(ingress, definition("Customer"))
    create(ingress, definition("Order", schema=object_schema(customerId=ref("Customer"))))
    response = update(ingress, "Order", {"schema": object_schema(customerId={"type": "string"})})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["referenceSchemas"] == []
    assert deactivate(ingress, "Customer").status_code == 200


def test_self_reference_does_not_block_deactivation(ingress: TestClient) -> None:
    create(ingress, definition("Employee", schema=object_schema(managerId=ref("Employee"))))
    response = deactivate(ingress, "Employee")
    assert response.status_code == 200, response.text
    assert_not_found(get(ingress, "Employee"))


# --- isolation between partners ----------------------------------------------------------

def test_other_partner_gets_404_not_403_for_a_definition(ingress: TestClient) -> None:
    data = create(ingress, definition("Customer", pluralName="Customers"), partner="partner-a")
    for key in (data["id"], "Customer", "customers"):
        assert_not_found(get(ingress, key, partner="partner-b"))
    assert_not_found(update(ingress, data["id"], {"description": "mine now"}, partner="partner-b"))
    assert_not_found(deactivate(ingress, "Customer", partner="partner-b"))
    assert listed(ingress, "partner-b") == []
    # partner-a's definition is untouched.
    assert get(ingress, data["id"]).json()["data"] == data


def test_partners_may_use_the_same_name(ingress: TestClient) -> None:
    a = create(ingress, definition("Customer"), partner="partner-a")
    b = create(ingress, definition("customer"), partner="partner-b")
    assert b["id"] != a["id"]
    assert b["platformId"] == "partner-b"
    assert get(ingress, "CUSTOMER", partner="partner-a").json()["data"]["id"] == a["id"]
    assert get(ingress, "CUSTOMER", partner="partner-b").json()["data"]["id"] == b["id"]
    assert [d["id"] for d in listed(ingress, "partner-b")] == [b["id"]]


# --- several instances, restarts ---------------------------------------------------------

def _poll(probe, timeout_s: float = 1.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval_s)


def test_definition_created_on_one_instance_is_readable_on_another_within_a_second(
        ingress: TestClient, second_ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    response = _poll(lambda: (r := get(second_ingress, "customer")).status_code == 200 and r)
    assert response, "definition not visible on the second instance within 1 s"
    assert response.json()["data"] == data


def test_update_and_deactivation_on_one_instance_are_seen_by_another(
        ingress: TestClient, second_ingress: TestClient) -> None:
    data = create(ingress, definition("Customer"))
    assert update(ingress, data["id"], {"schema": object_schema(email={"type": "string"})}).status_code == 200
    seen = _poll(lambda: (r := get(second_ingress, data["id"])).status_code == 200
                 and r.json()["data"]["versionNumber"] == 2)
    assert seen, "schema update not visible on the second instance within 1 s"

    assert deactivate(ingress, data["id"]).status_code == 200
    gone = _poll(lambda: get(second_ingress, data["id"]).status_code == 404)
    assert gone, "deactivation not visible on the second instance within 1 s"


def test_names_stay_unique_across_instances(ingress: TestClient, second_ingress: TestClient) -> None:
    create(ingress, definition("Customer"))
    assert _poll(lambda: get(second_ingress, "Customer").status_code == 200)
    assert_error(second_ingress.post(BASE, json=definition("CUSTOMER"), headers=auth()), 409)


def test_definitions_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as first:
        customer = create(first, definition("Customer"))
        assert update(first, "Customer", {"schema": object_schema(email={"type": "string"})}).status_code == 200
        legacy = create(first, definition("Legacy"))
        assert deactivate(first, legacy["id"]).status_code == 200

    with TestClient(create_app(settings)) as restarted:
        items = listed(restarted)
        assert [d["id"] for d in items] == [customer["id"]]
        assert items[0]["versionNumber"] == 2
        assert items[0]["name"] == "Customer"
        assert_not_found(get(restarted, "Legacy"))
        # The restarted process also enforces uniqueness from the materialised state.
        assert_error(restarted.post(BASE, json=definition("customer"), headers=auth()), 409)
