"""Patches and single-resource writes (docs/api.md 6a), the batch-list filters (section 5), strict
query values and 405s: over HTTP, through the real pipeline (broker, worker)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.testclient import TestClient

from schemas.events import resource_key
from tests.support import (
    CUSTOMER_SCHEMA,
    Response,
    bearer,
    ingress_context,
    partner_token,
    tenant_token,
    wait_terminal,
    wait_until,
)
from topics.partitioning import partition_for

DEFINITIONS = "/partner/schema-definitions"


def _headers() -> dict[str, str]:
    """A fresh tenant token per request: one made at import time expires during a long suite."""
    return bearer(tenant_token())


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
                              params=query, headers=_headers())
    assert response.status_code == 202, response.text
    return wait_terminal(client, response.json()["data"]["batchId"], _headers())


def _resource(client: TestClient, schema: str, external_id: str) -> dict[str, Any] | None:
    response = client.get(f"/api/resources/{schema}/{external_id}", headers=_headers())
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
    response = ingress.patch("/api/resources/Customer/batch", headers=_headers(), json={"resources": [
        {"name": "no id"}, {"id": "c1", "name": None}, {"id": "c2", "age": "old"}, {"id": "c3", "zip": 1}]})
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert [e.split(":")[0] for e in errors] == [
        "resources[0].id", "resources[1].name", "resources[2].age", "resources[3].zip"], errors
    listed = ingress.get("/api/batches", headers=_headers()).json()["data"]
    assert listed["pagination"]["total"] == 0, "a refused patch enqueued something"


def test_single_resource_writes_answer_with_the_outcome(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    created = ingress.post("/api/resources/Customer", json={"data": {"id": "s1", "name": "Sam"}}, headers=_headers())
    assert created.status_code == 200, created.text
    resource = created.json()["data"]
    assert resource["resourceExternalId"] == "s1" and resource["data"] == {"id": "s1", "name": "Sam"}
    assert resource["resource_external_id"] == "s1"

    again = ingress.post("/api/resources/Customer", params={"onconflict": "reject"},
                         json={"data": {"id": "s1", "name": "Other"}}, headers=_headers())
    assert again.status_code == 409 and again.json()["data"]["code"] == "ALREADY_EXISTS", again.text
    merged = ingress.post("/api/resources/Customer", json={"data": {"id": "s1", "age": 4}}, headers=_headers())
    assert merged.status_code == 200 and merged.json()["data"]["data"]["age"] == 4, merged.text

    patched = ingress.patch("/api/resources/Customer/s1", json={"data": {"age": None, "tags": ["x"]}},
                            headers=_headers())
    assert patched.status_code == 200, patched.text
    body = patched.json()["data"]
    assert body["included"] == [] and body["result"]["data"] == {"id": "s1", "name": "Sam", "tags": ["x"]}
    assert body["result"]["id"] == resource["id"]

    absent = ingress.patch("/api/resources/Customer/nobody", json={"data": {"age": 1}}, headers=_headers())
    assert absent.status_code == 404 and absent.json()["data"]["code"] == "NOT_FOUND", absent.text
    other = ingress.patch("/api/resources/Customer/s1", json={"data": {"id": "s2", "age": 1}}, headers=_headers())
    assert other.status_code == 400 and "s2" in other.json()["message"], other.text
    invalid = ingress.post("/api/resources/Customer", json={"data": {"id": "s3"}}, headers=_headers())
    assert invalid.status_code == 400 and invalid.json()["data"]["code"] == "VALIDATION_FAILED", invalid.text
    assert invalid.json()["errors"][0].startswith("data"), invalid.text
    missing = ingress.post("/api/resources/Order", json={"data": {"id": "o1", "customer": "nobody"}},
                           headers=_headers())
    assert missing.status_code == 400 and missing.json()["data"]["code"] == "MISSING_DEPENDENCY", missing.text
    refused = ingress.post("/api/resources/Customer", json={"data": {"id": "s4", "name": 5}}, headers=_headers())
    assert refused.status_code == 400 and refused.json()["errors"] == ['data.name: 5 is not of type "string"']
    for bad in (b"[]", b"{}", b'{"data": 1}', b"not json"):
        response = ingress.post("/api/resources/Customer", content=bad, headers=_headers())
        assert response.status_code == 400, (bad, response.text)

    # Each write was a one-record batch of its type.
    types = [b["batchType"] for b in ingress.get("/api/batches", params={"limit": "100"},
                                                 headers=_headers()).json()["data"]["results"]]
    assert types.count("PARTNER_RESOURCE_BATCH_PATCH") == 2 and types.count("PARTNER_RESOURCE_JSON_INGEST") == 5


def test_a_single_write_whose_outcome_is_late_answers_202_with_its_batch(settings: Any, ingress: TestClient) -> None:
    """No worker runs: the outcome cannot be known within REACH_SYNC_WAIT_S."""
    _define(ingress)
    ingress_context(ingress).settings = replace(settings, sync_wait_s=0.5)
    response = ingress.post("/api/resources/Customer", json={"data": {"id": "late", "name": "L"}}, headers=_headers())
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["recordCount"] == 1 and ingress.get(f"/api/batches/{data['batchId']}", headers=_headers()).json()[
        "data"]["status"] == "queued"


def test_batch_lists_filter_by_type_and_status(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    upload = _batch(ingress, "POST", "Customer", [{"id": "f1", "name": "F"}])
    patch = _batch(ingress, "PATCH", "Customer", [{"id": "f1", "age": 2}])
    failed = _batch(ingress, "PATCH", "Customer", [{"id": "nobody", "age": 2}])

    def ids(**query: str) -> list[str]:
        response = ingress.get("/api/batches", params=query, headers=_headers())
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
        response = ingress.get("/api/batches", params=query, headers=_headers())
        assert response.status_code == 400, (query, response.text)


def test_query_values_are_strict_and_405_names_the_allowed_methods(ingress: TestClient) -> None:
    _define(ingress)
    for query in ({"onconflict": ""}, {"onconflict": "UPSERT"}, {"ignoreUnknownFields": ""},
                  {"dependencyWaitTimeout": ""}, {"dependencyWaitTimeout": "²"}, {"dependencyWaitTimeout": "-1"}):
        response = ingress.post("/api/resources/Customer/batch", params=query, headers=_headers(),
                                json={"resources": [{"id": "q", "name": "Q"}]})
        assert response.status_code == 400, (query, response.text)
    response = ingress.patch("/api/resources/Customer/batch", params={"ignoreUnknownFields": "yes"},
                             headers=_headers(), json={"resources": [{"id": "q", "name": "Q"}]})
    assert response.status_code == 400, response.text
    response = ingress.get("/api/batches/x", params={"includePendingDetails": "1"}, headers=_headers())
    assert response.status_code == 400, response.text

    def allow(response: Response) -> set[str]:
        assert response.status_code == 405, response.text
        return set(response.headers["allow"].split(", "))

    assert allow(ingress.put("/api/resources/Customer/batch", json={})) >= {"POST", "PATCH"}
    assert allow(ingress.delete("/api/batches")) == {"GET", "HEAD"}
    assert allow(ingress.put("/api/resources/Customer")) == {"GET", "HEAD", "POST"}


# --- deletes ------------------------------------------------------------------------------

def _delete(client: TestClient, schema: str, ids: list[str], **body: Any) -> dict:
    response = client.request("DELETE", f"/api/resources/{schema}/batch", json={"externalIds": ids, **body},
                              headers=_headers())
    assert response.status_code == 202, response.text
    return wait_terminal(client, response.json()["data"]["batchId"], _headers())


def _listed(client: TestClient, schema: str) -> tuple[list[str], int]:
    data = client.get(f"/api/resources/{schema}", params={"limit": "100"}, headers=_headers()).json()["data"]
    return [r["resourceExternalId"] for r in data["results"]], data["pagination"]["total"]


def test_a_delete_removes_the_resource_from_every_read_and_a_later_upsert_creates_it_anew(
        ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": f"d{i}", "name": "D"} for i in range(3)])
    first = _resource(ingress, "Customer", "d1")
    batch = _delete(ingress, "Customer", ["d1", "nobody", "d1"])
    assert batch["batchType"] == "PARTNER_RESOURCE_BATCH_DELETE", batch
    assert batch["progress"]["successfulRecords"] == 1, batch
    assert {k: v["code"] for k, v in batch["errors"]["details"].items()} == {"1": "NOT_FOUND", "2": "NOT_FOUND"}
    assert _resource(ingress, "Customer", "d1") is None
    assert _listed(ingress, "Customer") == (["d0", "d2"], 2)
    # A record naming it fails as for any missing resource.
    order = _batch(ingress, "POST", "Order", [{"id": "o1", "customer": "d1"}])
    assert order["errors"]["summary"] == {"MISSING_DEPENDENCY": 1}, order
    _batch(ingress, "POST", "Customer", [{"id": "d1", "name": "New"}])
    again = _resource(ingress, "Customer", "d1")
    assert again is not None and first is not None
    assert again["id"] != first["id"] and again["data"] == {"id": "d1", "name": "New"}
    assert _listed(ingress, "Customer")[1] == 3


def test_upsert_delete_upsert_back_to_back_ends_with_the_last_data_every_time(ingress: TestClient,
                                                                            worker: Any) -> None:
    _define(ingress)
    ids = []
    for i in range(15):
        for method, body in (("POST", {"resources": [{"id": f"u{i}", "name": "one", "age": 1}]}),
                             ("DELETE", {"externalIds": [f"u{i}"]}),
                             ("POST", {"resources": [{"id": f"u{i}", "name": "three"}]})):
            response = ingress.request(method, "/api/resources/Customer/batch", json=body, headers=_headers())
            assert response.status_code == 202, response.text
            ids.append(response.json()["data"]["batchId"])
    outcomes = [wait_terminal(ingress, b, _headers())["status"] for b in ids]
    assert outcomes == ["success"] * len(ids), outcomes
    wrong = {f"u{i}": r for i in range(15)
             if (r := _resource(ingress, "Customer", f"u{i}")) is None or r["data"] != {"id": f"u{i}", "name": "three"}}
    assert not wrong, f"not the last write: {wrong}"


def test_a_referenced_resource_stays_until_nothing_references_it(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": "c1", "name": "C"}, {"id": "c2", "name": "C"}])
    _batch(ingress, "POST", "Order", [{"id": "o1", "customer": "c1"}, {"id": "o2", "customer": "c2"}])
    batch = _delete(ingress, "Customer", ["c1", "c2"])
    details = batch["errors"]["details"]
    assert batch["status"] == "failed" and {v["code"] for v in details.values()} == {"REFERENCED"}, batch
    assert "is referenced by Order/o1" in details["0"]["message"], details
    assert _resource(ingress, "Customer", "c1") is not None

    # o1 stops referencing c1 (a patch), o2 is deleted: both customers may go now.
    assert _batch(ingress, "PATCH", "Order", [{"id": "o1", "customer": None}])["status"] == "success"
    assert _delete(ingress, "Order", ["o2"])["status"] == "success"
    batch = _delete(ingress, "Customer", ["c1", "c2"])
    assert batch["status"] == "success", batch
    assert _listed(ingress, "Customer") == ([], 0)


def test_a_reference_dropped_and_given_back_at_once_still_keeps_its_resource(ingress: TestClient, worker: Any) -> None:
    """Orders stop naming their customer and name it again in the next batch, sent before the
    first is applied: every customer is still referenced, so none may be deleted. Half the
    pairs share a partition (the pin is made in place there), half do not."""
    _define(ingress)
    partitions = ingress_context(ingress).settings.topic_partitions
    ids = {name: ingress.get(f"{DEFINITIONS}/{name}", headers=bearer(partner_token())).json()["data"]["id"]
           for name in ("Customer", "Order")}

    def partition(name: str, external_id: str) -> int:
        return partition_for(resource_key("partner-a", "tenant-1", ids[name], external_id), partitions)

    same = [i for i in range(400) if partition("Customer", f"c{i}") == partition("Order", f"o{i}")][:20]
    apart = [i for i in range(400) if partition("Customer", f"c{i}") != partition("Order", f"o{i}")][:20]
    pairs = [(f"c{i}", f"o{i}") for i in (*same, *apart)]
    _batch(ingress, "POST", "Customer", [{"id": c, "name": "C"} for c, _ in pairs])
    assert _batch(ingress, "POST", "Order", [{"id": o, "customer": c} for c, o in pairs])["status"] == "success"

    dropped = [{"id": o, "customer": None} for c, o in pairs]
    given_back = [{"id": o, "customer": c} for c, o in pairs]
    sent = [ingress.request("PATCH", "/api/resources/Order/batch", headers=_headers(), json={"resources": resources})
            for resources in (dropped, given_back)]
    for response in sent:
        assert response.status_code == 202, response.text
    for response in sent:
        assert wait_terminal(ingress, response.json()["data"]["batchId"], _headers())["status"] == "success"
    batch = _delete(ingress, "Customer", [c for c, _ in pairs])
    kept = [c for c, _ in pairs if _resource(ingress, "Customer", c) is not None]
    assert len(kept) == len(pairs), (f"deleted while referenced: {sorted(set(c for c, _ in pairs) - set(kept))}; "
                                     f"delete batch: {batch['progress']}")
    assert {v["code"] for v in batch["errors"]["details"].values()} == {"REFERENCED"}, batch


def test_single_delete_answers_with_its_outcome(ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": "x1", "name": "X"}, {"id": "x2", "name": "Y"}])
    _batch(ingress, "POST", "Order", [{"id": "o1", "customer": "x2"}])
    deleted = ingress.delete("/api/resources/Customer/x1", headers=_headers())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"] == {"resourceExternalId": "x1", "deleted": True,
                                      "cascade": {"deletedRecords": 0, "bySchema": {}}}
    gone = ingress.delete("/api/resources/Customer/x1", headers=_headers())
    assert gone.status_code == 404 and gone.json()["data"]["code"] == "NOT_FOUND", gone.text
    referenced = ingress.delete("/api/resources/Customer/x2", headers=_headers())
    assert referenced.status_code == 409 and referenced.json()["data"]["code"] == "REFERENCED", referenced.text
    assert ingress.delete("/api/resources/Customer/x2", params={"cascade": ""}, headers=_headers()).status_code == 400


def test_a_self_reference_does_not_keep_a_resource_from_being_deleted(ingress: TestClient, worker: Any) -> None:
    body = {"name": "Employee", "externalIdField": "id", "schema": {
        "type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "manager": {"$ref": "reach:schemas/Employee"}}}}
    assert ingress.post(DEFINITIONS, json=body, headers=bearer(partner_token())).status_code == 200
    _batch(ingress, "POST", "Employee", [{"id": "boss"}])
    batch = _batch(ingress, "POST", "Employee", [{"id": "boss", "manager": "boss"}, {"id": "e1", "manager": "boss"}])
    assert batch["status"] == "success", batch
    assert _delete(ingress, "Employee", ["boss"])["errors"]["summary"] == {"REFERENCED": 1}
    assert _delete(ingress, "Employee", ["e1"])["status"] == "success"
    assert _delete(ingress, "Employee", ["boss"])["status"] == "success"


def test_a_delete_racing_a_reference_never_leaves_a_reference_to_nothing(
        ingress: TestClient, second_ingress: TestClient, worker: Any) -> None:
    """Deletes of A_i through one ingress, writes of B_i naming A_i through another, at once:
    each pair ends with A_i deleted and B_i failed, or A_i in place (REFERENCED) and B_i applied."""
    import threading

    _define(ingress)
    rounds, size = 6, 50
    seen: dict[str, int] = {"A deleted, B failed": 0, "A kept, B applied": 0}
    for r in range(rounds):
        ids = [f"r{r}a{i}" for i in range(size)]
        _batch(ingress, "POST", "Customer", [{"id": a, "name": "A"} for a in ids])
        answers: dict[str, Any] = {}

        def delete() -> None:
            answers["delete"] = ingress.request("DELETE", "/api/resources/Customer/batch",
                                                json={"externalIds": ids}, headers=_headers())

        def refer() -> None:
            answers["refer"] = second_ingress.post("/api/resources/Order/batch", headers=_headers(), json={
                "resources": [{"id": f"{a}-order", "customer": a} for a in ids]})

        if r % 2 == 0:  # both at once
            threads = [threading.Thread(target=delete), threading.Thread(target=refer)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:  # the deletes sent while the workers are applying the writes: they meet there
            refer()
            batch_id = answers["refer"].json()["data"]["batchId"]

            def progressed() -> int | None:
                done = ingress.get(f"/api/batches/{batch_id}", headers=_headers()).json()["data"]["progress"]
                return done["processedRecords"] if done["processedRecords"] >= 1 else None
            wait_until(progressed, 60, interval_s=0.005, what="the writes to begin applying")
            delete()
        assert answers["delete"].status_code == 202 and answers["refer"].status_code == 202, answers
        deleted = wait_terminal(ingress, answers["delete"].json()["data"]["batchId"], _headers())
        referred = wait_terminal(ingress, answers["refer"].json()["data"]["batchId"], _headers())
        for i, a in enumerate(ids):
            a_gone = _resource(ingress, "Customer", a) is None
            b_there = _resource(ingress, "Order", f"{a}-order") is not None
            state = (f"A {'deleted' if a_gone else 'kept'}, B {'applied' if b_there else 'failed'}; delete: "
                     f"{deleted['errors']['details'].get(str(i))}, write: {referred['errors']['details'].get(str(i))}")
            assert not (a_gone and b_there), f"{a}: {state}"
            assert a_gone or b_there, f"{a}: neither happened: {state}"
            seen["A deleted, B failed" if a_gone else "A kept, B applied"] += 1
    print(f"delete/reference race, {rounds * size} pairs: {seen}")


# --- cascade ------------------------------------------------------------------------------

def _define_employees(client: TestClient) -> None:
    body = {"name": "Employee", "externalIdField": "id", "schema": {
        "type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "manager": {"$ref": "reach:schemas/Employee"}}}}
    assert client.post(DEFINITIONS, json=body, headers=bearer(partner_token())).status_code == 200


def test_a_cascade_deletes_every_referrer_transitively_and_counts_them_by_schema(
        ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    shipment = {"name": "Shipment", "externalIdField": "id", "schema": {
        "type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "order": {"$ref": "reach:schemas/Order"}}}}
    assert ingress.post(DEFINITIONS, json=shipment, headers=bearer(partner_token())).status_code == 200
    _batch(ingress, "POST", "Customer", [{"id": "c1", "name": "C"}, {"id": "c2", "name": "C"}])
    _batch(ingress, "POST", "Order", [{"id": "o1", "customer": "c1"}, {"id": "o2", "customer": "c1"},
                                      {"id": "o3", "customer": "c2"}])
    _batch(ingress, "POST", "Shipment", [{"id": "s1", "order": "o1"}, {"id": "s2", "order": "o2"},
                                         {"id": "s3", "order": "o3"}])

    batch = _delete(ingress, "Customer", ["c1"], cascade=True)
    assert batch["status"] == "success", batch
    assert batch["progress"]["totalRecords"] == 1, "only the named resources count in progress"
    assert batch["cascade"] == {"deletedRecords": 4, "bySchema": {"Order": 2, "Shipment": 2}}, batch
    assert [_resource(ingress, s, i) for s, i in (("Customer", "c1"), ("Order", "o1"), ("Order", "o2"),
                                                  ("Shipment", "s1"), ("Shipment", "s2"))] == [None] * 5
    assert _listed(ingress, "Order") == (["o3"], 1) and _listed(ingress, "Shipment") == (["s3"], 1)
    assert _listed(ingress, "Customer") == (["c2"], 1)

    # Without cascade the same shape is refused; a single DELETE with ?cascade=true answers the counts.
    assert _delete(ingress, "Customer", ["c2"])["errors"]["summary"] == {"REFERENCED": 1}
    single = ingress.delete("/api/resources/Customer/c2", params={"cascade": "true"}, headers=_headers())
    assert single.status_code == 200, single.text
    assert single.json()["data"] == {"resourceExternalId": "c2", "deleted": True,
                                     "cascade": {"deletedRecords": 2, "bySchema": {"Order": 1, "Shipment": 1}}}
    assert _listed(ingress, "Shipment") == ([], 0) and _listed(ingress, "Order") == ([], 0)
    # A delete batch without cascade reports an empty one.
    _batch(ingress, "POST", "Customer", [{"id": "c3", "name": "C"}])
    assert _delete(ingress, "Customer", ["c3"])["cascade"] == {"deletedRecords": 0, "bySchema": {}}


def test_a_cascade_ends_on_cycles_and_self_references(ingress: TestClient, worker: Any) -> None:
    _define_employees(ingress)
    # a <-> b, b's report x; boss manages itself and y; p -> q -> r -> p
    _batch(ingress, "POST", "Employee", [{"id": i} for i in ("a", "b", "boss", "p", "q", "r")])
    batch = _batch(ingress, "POST", "Employee", [
        {"id": "a", "manager": "b"}, {"id": "b", "manager": "a"}, {"id": "x", "manager": "b"},
        {"id": "boss", "manager": "boss"}, {"id": "y", "manager": "boss"},
        {"id": "p", "manager": "q"}, {"id": "q", "manager": "r"}, {"id": "r", "manager": "p"}])
    assert batch["status"] == "success", batch

    deleted = _delete(ingress, "Employee", ["a"], cascade=True)
    assert deleted["status"] == "success", deleted
    assert deleted["cascade"] == {"deletedRecords": 2, "bySchema": {"Employee": 2}}, deleted  # b and x
    deleted = _delete(ingress, "Employee", ["boss"], cascade=True)
    assert deleted["cascade"] == {"deletedRecords": 1, "bySchema": {"Employee": 1}}, deleted  # y
    deleted = _delete(ingress, "Employee", ["q"], cascade=True)
    assert deleted["cascade"] == {"deletedRecords": 2, "bySchema": {"Employee": 2}}, deleted  # p and r
    assert _listed(ingress, "Employee") == ([], 0)


def test_a_cascade_spares_what_stopped_referencing_before_it_came(ingress: TestClient, worker: Any) -> None:
    """Orders drop their customer, and the customers are deleted with cascade at once after:
    an order whose patch applied first no longer references its customer and stays; one that
    the cascade reached first is deleted (counted) and its patch then finds nothing. Never both
    the patch applied and the order deleted (before: 147 of 200 orders in a probe)."""
    _define(ingress)
    pairs = [(f"c{i}", f"o{i}") for i in range(60)]
    _batch(ingress, "POST", "Customer", [{"id": c, "name": "C"} for c, _ in pairs])
    assert _batch(ingress, "POST", "Order", [{"id": o, "customer": c} for c, o in pairs])["status"] == "success"
    patch = ingress.request("PATCH", "/api/resources/Order/batch", headers=_headers(),
                            json={"resources": [{"id": o, "customer": None} for _, o in pairs]})
    assert patch.status_code == 202, patch.text
    deleted = _delete(ingress, "Customer", [c for c, _ in pairs], cascade=True)
    patched = wait_terminal(ingress, patch.json()["data"]["batchId"], _headers())
    assert deleted["status"] == "success", deleted
    failed = patched["errors"]["details"] if patched["status"] != "success" else {}
    gone = 0
    for i, (c, o) in enumerate(pairs):
        assert _resource(ingress, "Customer", c) is None, c
        order = _resource(ingress, "Order", o)
        if order is None:
            gone += 1
            assert failed.get(str(i), {}).get("code") == "NOT_FOUND", \
                f"{o} was deleted by the cascade after its patch dropped {c}: {failed.get(str(i))}"
        else:
            assert "customer" not in order["data"] and str(i) not in failed, (o, order, failed.get(str(i)))
    assert deleted["cascade"] == ({"deletedRecords": gone, "bySchema": {"Order": gone}} if gone
                                  else {"deletedRecords": 0, "bySchema": {}}), (deleted["cascade"], gone)


def test_a_cascade_racing_new_references_leaves_no_reference_to_nothing(
        ingress: TestClient, second_ingress: TestClient, worker: Any) -> None:
    """Cascade deletes of A_i through one ingress while another writes B_i naming A_i: whatever
    the order, A_i ends deleted and B_i absent (failed, or applied and then deleted by the cascade)."""
    import threading

    _define(ingress)
    rounds, size = 4, 50
    seen = {"B failed": 0, "B deleted by the cascade": 0}
    for r in range(rounds):
        ids = [f"k{r}a{i}" for i in range(size)]
        _batch(ingress, "POST", "Customer", [{"id": a, "name": "A"} for a in ids])
        # Half of them have a referrer already: their cascades do work.
        _batch(ingress, "POST", "Order", [{"id": f"{a}-old", "customer": a} for a in ids[::2]])
        answers: dict[str, Any] = {}

        def delete() -> None:
            answers["delete"] = ingress.request("DELETE", "/api/resources/Customer/batch",
                                                json={"externalIds": ids, "cascade": True}, headers=_headers())

        def refer() -> None:
            answers["refer"] = second_ingress.post("/api/resources/Order/batch", headers=_headers(), json={
                "resources": [{"id": f"{a}-new", "customer": a} for a in ids]})

        threads = [threading.Thread(target=delete), threading.Thread(target=refer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers["delete"].status_code == 202 and answers["refer"].status_code == 202, answers
        deleted = wait_terminal(ingress, answers["delete"].json()["data"]["batchId"], _headers())
        referred = wait_terminal(ingress, answers["refer"].json()["data"]["batchId"], _headers())
        assert deleted["status"] == "success", deleted
        for i, a in enumerate(ids):
            left = [n for s, n in (("Customer", a), ("Order", f"{a}-new"), ("Order", f"{a}-old"))
                    if _resource(ingress, s, n) is not None]
            assert not left, f"{a}: {left} still there; write: {referred['errors']['details'].get(str(i))}"
            seen["B failed" if str(i) in referred["errors"]["details"] else "B deleted by the cascade"] += 1
        cascaded = deleted["cascade"]["deletedRecords"]
        applied = referred["progress"]["successfulRecords"]
        assert cascaded == size // 2 + applied, (deleted["cascade"], referred["progress"])
    print(f"cascade/reference race, {rounds * size} pairs: {seen}")


# --- deletes of resources that reference each other; dry runs; deleteAll -----------------

def _dry_run(client: TestClient, schema: str, ids: list[str] | None = None, **body: Any) -> dict:
    payload = {"externalIds": ids, "dryRun": True, **body} if ids is not None else {"dryRun": True, **body}
    response = client.request("DELETE", f"/api/resources/{schema}/batch", json=payload, headers=_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_delete_spares_what_its_own_request_deletes_and_the_dry_run_says_so_first(
        ingress: TestClient, worker: Any) -> None:
    _define_employees(ingress)
    # boss <- e1, boss <- e2 <- e3 <- x (x is never named); a <-> b; p -> q -> r -> p, s -> p
    for wave in ([{"id": "boss"}, {"id": "a"}, {"id": "b"}, {"id": "p"}, {"id": "q"}, {"id": "r"}],
                 [{"id": "e1", "manager": "boss"}, {"id": "e2", "manager": "boss"}, {"id": "a", "manager": "b"},
                  {"id": "b", "manager": "a"}, {"id": "p", "manager": "q"}, {"id": "q", "manager": "r"},
                  {"id": "r", "manager": "p"}, {"id": "s", "manager": "p"}],
                 [{"id": "e3", "manager": "e2"}], [{"id": "x", "manager": "e3"}]):
        assert _batch(ingress, "POST", "Employee", wave)["status"] == "success"
    listed = _listed(ingress, "Employee")[1]

    # x keeps e3, e3 keeps e2, e2 keeps boss: only e1 goes.
    named = ["boss", "e1", "e2", "e3"]
    dry = _dry_run(ingress, "Employee", named)
    assert (dry["wouldDelete"], dry["skippedDueToReferences"], dry["totalRecords"]) == ({"Employee": 1}, 3, 1), dry
    assert dry["dryRun"] is True and dry["schemaDefinitionId"]
    assert _listed(ingress, "Employee")[1] == listed, "a dry run deleted something"
    assert ingress.get("/api/batches", headers=_headers()).json()["data"]["pagination"]["total"] == 4, \
        "a dry run created a batch"
    batch = _delete(ingress, "Employee", named)
    assert {k: v["code"] for k, v in batch["errors"]["details"].items()} == \
        {"0": "REFERENCED", "2": "REFERENCED", "3": "REFERENCED"}, batch
    assert _resource(ingress, "Employee", "e1") is None

    # Named with x, the chain goes whole (each waits for its referrer's delete).
    ids = ["boss", "e2", "e3", "x"]
    dry = _dry_run(ingress, "Employee", ids)
    assert (dry["totalRecords"], dry["skippedDueToReferences"]) == (4, 0), dry
    assert _delete(ingress, "Employee", ids)["status"] == "success"
    # Without cascade a cycle stays (none of it may go first); s, which references the cycle, goes.
    ids = ["a", "b", "s", "r", "q", "p"]
    dry = _dry_run(ingress, "Employee", ids)
    assert (dry["totalRecords"], dry["skippedDueToReferences"]) == (1, 5), dry
    batch = _delete(ingress, "Employee", ids)
    assert batch["errors"]["summary"] == {"REFERENCED": 5} and "2" not in batch["errors"]["details"], batch
    dry = _dry_run(ingress, "Employee", ids, cascade=True)
    assert (dry["totalRecords"], dry["skippedDueToReferences"]) == (5, 0), dry
    assert _delete(ingress, "Employee", ids, cascade=True)["status"] == "partial_success"  # s: NOT_FOUND
    assert _listed(ingress, "Employee") == ([], 0)


def test_a_cascade_dry_run_counts_every_schema_and_delete_all_takes_the_schema_at_acceptance(
        ingress: TestClient, worker: Any) -> None:
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": f"c{i}", "name": "C"} for i in range(5)])
    _batch(ingress, "POST", "Order", [{"id": "o1", "customer": "c1"}, {"id": "o2", "customer": "c1"},
                                      {"id": "o3", "customer": "c2"}])
    dry = _dry_run(ingress, "Customer", ["c1", "c2", "nobody"], cascade=True)
    assert dry["wouldDelete"] == {"Customer": 2, "Order": 3} and dry["totalRecords"] == 5, dry
    assert dry["skippedDueToReferences"] == 0
    dry = _dry_run(ingress, "Customer", deleteAll=True)
    assert (dry["wouldDelete"], dry["skippedDueToReferences"]) == ({"Customer": 3}, 2), dry

    response = ingress.request("DELETE", "/api/resources/Customer/batch", json={"deleteAll": True, "externalIds": []},
                               headers=_headers())
    assert response.status_code == 202 and response.json()["data"]["recordCount"] == 5, response.text
    batch = wait_terminal(ingress, response.json()["data"]["batchId"], _headers())
    assert batch["progress"]["successfulRecords"] == 3 and batch["errors"]["summary"] == {"REFERENCED": 2}, batch
    assert _listed(ingress, "Customer") == (["c1", "c2"], 2)

    response = ingress.request("DELETE", "/api/resources/Customer/batch", json={"deleteAll": True, "cascade": True},
                               headers=_headers())
    batch = wait_terminal(ingress, response.json()["data"]["batchId"], _headers())
    assert batch["status"] == "success" and batch["cascade"] == {"deletedRecords": 3, "bySchema": {"Order": 3}}, batch
    assert _listed(ingress, "Customer") == ([], 0) and _listed(ingress, "Order") == ([], 0)
    # Nothing left: a batch of no records, complete at once.
    response = ingress.request("DELETE", "/api/resources/Customer/batch", json={"deleteAll": True}, headers=_headers())
    assert response.status_code == 202 and response.json()["data"]["recordCount"] == 0, response.text
    assert wait_terminal(ingress, response.json()["data"]["batchId"], _headers())["status"] == "success"


def test_delete_all_above_its_bound_is_refused_and_enqueues_nothing(settings: Any, worker: Any, reader: Any) -> None:
    from dataclasses import replace

    from ingest.app import create_app

    with TestClient(create_app(replace(settings, delete_all_max=2))) as client:
        _define(client)
        _batch(client, "POST", "Customer", [{"id": f"c{i}", "name": "C"} for i in range(3)])
        response = client.request("DELETE", "/api/resources/Customer/batch", json={"deleteAll": True},
                                  headers=_headers())
        assert response.status_code == 400 and "at most 2" in response.json()["message"], response.text
        assert "Customer has 3" in response.json()["message"], response.text
        assert _dry_run(client, "Customer", deleteAll=True)["totalRecords"] == 3  # a dry run has no bound
        listed = client.get("/api/batches", params={"batchType": "PARTNER_RESOURCE_BATCH_DELETE"},
                            headers=_headers()).json()["data"]
        assert listed["pagination"]["total"] == 0 and _listed(client, "Customer")[1] == 3


def test_a_cascade_that_reaches_named_resources_first_counts_them_as_named(ingress: TestClient, worker: Any) -> None:
    """deleteAll with cascade over a hierarchy: a manager's cascade may delete a report before
    the report's own delete comes; that delete succeeds and nothing is counted twice."""
    _define_employees(ingress)
    _batch(ingress, "POST", "Employee", [{"id": "ceo"}])
    _batch(ingress, "POST", "Employee", [{"id": f"m{i}", "manager": "ceo"} for i in range(5)])
    _batch(ingress, "POST", "Employee", [{"id": f"e{i}", "manager": f"m{i % 5}"} for i in range(40)])
    _define(ingress)
    _batch(ingress, "POST", "Customer", [{"id": "cx", "name": "C"}])
    dry = _dry_run(ingress, "Employee", deleteAll=True, cascade=True)
    assert (dry["wouldDelete"], dry["totalRecords"]) == ({"Employee": 46}, 46), dry
    response = ingress.request("DELETE", "/api/resources/Employee/batch", json={"deleteAll": True, "cascade": True},
                               headers=_headers())
    assert response.status_code == 202 and response.json()["data"]["recordCount"] == 46, response.text
    batch = wait_terminal(ingress, response.json()["data"]["batchId"], _headers())
    assert batch["status"] == "success", batch
    assert batch["cascade"] == {"deletedRecords": 0, "bySchema": {}}, batch
    assert _listed(ingress, "Employee") == ([], 0) and _listed(ingress, "Customer")[1] == 1
