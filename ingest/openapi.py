"""`GET /openapi.json`: the OpenAPI 3 description of every route of the ingress."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingest.responses import JSONResponse
from schemas.batch_events import BATCH_TYPES
from schemas.records import MAX_RECORDS
from state.batch_state import STATUSES
from state.batch_store import RECORD_STATUSES

ERROR = {"$ref": "#/components/schemas/Error"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
TENANT_HEADER = [
    {"name": "reach-tenant-id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "With a partner token: the tenant to act for (alias: X-Tenant-Id)."},
]


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "Bad request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found",
             409: "Conflict", 413: "Body too large",
             422: "Idempotency-Key reused for another request",
             429: "Over the tenant's quota: nothing enqueued; retry after Retry-After (RateLimit fields say more)",
             503: "Kafka cannot take the write now, or the workers' backlog is over its bound (Retry-After)"}
    return {str(c): {"description": texts[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _ok(description: str, status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description,
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _page_params() -> list[dict[str, Any]]:
    return [{"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}]


DEFINITION_BODY = {"type": "object", "required": ["name", "externalIdField", "schema"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "pluralName": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "description": {"type": "string"},
    "category": {"type": "string", "enum": ["contacts_schema", "transactions_schema", "custom_schema",
                                             "combined_schema", "locations_schema", "customer_fields"]},
    "externalIdField": {"type": "string"}, "schema": {"type": "object"},
    "fieldsToExpose": {"type": "array", "items": {"type": "object"}}, "exposeNameJsonPath": {"type": "string"},
}}
UPLOAD_BODY = {"type": "object", "required": ["resources"], "properties": {
    "resources": {"type": "array", "minItems": 1, "maxItems": MAX_RECORDS,
                  "items": {"type": "object", "additionalProperties": {"nullable": True}}}}}
DELETE_BODY = {"type": "object", "properties": {
    "externalIds": {"type": "array", "maxItems": MAX_RECORDS, "items": {"type": "string", "minLength": 1}},
    "cascade": {"type": "boolean", "default": False}, "deleteAll": {"type": "boolean", "default": False},
    "dryRun": {"type": "boolean", "default": False}}}
SINGLE_BODY = {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "object", "additionalProperties": {"nullable": True}}}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
    "description": "Accept this request at most once per key of the tenant (kept REACH_IDEMPOTENCY_KEY_HOURS, "
                   "default 24): a retry gets the first 202 again with Idempotent-Replayed: true; the key with "
                   "another request: 422; while the first is being accepted: 409 with Retry-After"}
IGNORE_UNKNOWN = {"name": "ignoreUnknownFields", "in": "query", "required": False,
                  "schema": {"type": "string", "enum": ["true", "false"], "default": "false"}}
ON_CONFLICT = {"name": "onconflict", "in": "query", "required": False,
               "schema": {"type": "string", "enum": ["upsert", "reject"], "default": "upsert"}}
ID_OR_NAME = _path_param("idOrName", "The definition's id, name or pluralName (any case)")
SCHEMA = _path_param("schema", "The schema definition's id, name or pluralName (any case)")

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Reach resource ingestion", "version": "1.0.0",
             "description": "Batch upload of JSON-Schema resources over Apache Kafka (Reach API compatible). "
                            "Not described here: /schema-registry/*, the part of Confluent's Schema Registry API "
                            "that serves the ingest topic's Avro schemas to stock serializers (docs/producers.md)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (HS256)"}},
        "schemas": {
            "Success": {"type": "object", "required": ["success", "message"], "properties": {
                "success": {"type": "boolean"}, "message": {"type": "string"}, "data": {}}},
            "Error": {"type": "object", "required": ["success", "message"], "properties": {
                "success": {"type": "boolean"}, "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "string"}}, "data": {"type": "object"}}},
        },
    },
    "paths": {
        "/health": {"get": {"summary": "Liveness", "responses": _ok("The process answers")}},
        "/ready": {"get": {"summary": "Readiness: the broker answers",
                           "responses": {**_ok("Ready"), **_errors(503)}}},
        "/openapi.json": {"get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (all processes of this ingress)", "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/partner/schema-definitions": {
            "post": {"summary": "Create a schema definition", "security": BEARER,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": DEFINITION_BODY}}},
                     "responses": {**_ok("The definition"), **_errors(400, 401, 403, 409, 503)}},
            "get": {"summary": "List the partner's active definitions", "security": BEARER,
                    "responses": {**_ok("The definitions"), **_errors(401, 403)}},
        },
        "/partner/schema-definitions/{idOrName}": {
            "parameters": [ID_OR_NAME],
            "get": {"summary": "One definition", "security": BEARER,
                    "responses": {**_ok("The definition"), **_errors(401, 403, 404)}},
            "post": {"summary": "Update description, schema, fieldsToExpose, exposeNameJsonPath", "security": BEARER,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                     "responses": {**_ok("The definition"), **_errors(400, 401, 403, 404, 409, 503)}},
            "delete": {"summary": "Deactivate", "security": BEARER,
                       "responses": {**_ok("The definition"), **_errors(401, 403, 404, 409, 503)}},
        },
        "/api/resources/{schema}/batch": {
            "post": {
                "summary": "Batch upload resources (1..1000), processed asynchronously", "security": BEARER,
                "parameters": [SCHEMA, *TENANT_HEADER, IDEMPOTENCY_KEY, ON_CONFLICT, IGNORE_UNKNOWN,
                               {"name": "dependencyWaitTimeout", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 0}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": UPLOAD_BODY}}},
                "responses": {**_ok("Accepted: every record is durably in Kafka", 202),
                              **_errors(400, 401, 403, 404, 409, 413, 422, 429, 503)},
            },
            "delete": {
                "summary": "Batch delete resources by external id (1..1000) or every one of the schema (deleteAll); "
                           "a resource referenced by one this request does not delete stays (REFERENCED) unless "
                           "cascade; dryRun answers 200 with what would be deleted and changes nothing",
                "security": BEARER, "parameters": [SCHEMA, *TENANT_HEADER, IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {"application/json": {"schema": DELETE_BODY}}},
                "responses": {**_ok("Dry run: {dryRun, schemaDefinitionId, wouldDelete, skippedDueToReferences, "
                                    "totalRecords}; nothing changed, no batch"),
                              **_ok("Accepted: every delete is durably in Kafka", 202),
                              **_errors(400, 401, 403, 404, 409, 413, 422, 429, 503)},
            },
            "patch": {
                "summary": "Batch patch existing resources (1..1000; RFC 7396 merge, never creates)",
                "security": BEARER,
                "parameters": [SCHEMA, *TENANT_HEADER, IDEMPOTENCY_KEY, IGNORE_UNKNOWN],
                "requestBody": {"required": True, "content": {"application/json": {"schema": UPLOAD_BODY}}},
                "responses": {**_ok("Accepted: every record is durably in Kafka", 202),
                              **_errors(400, 401, 403, 404, 409, 413, 422, 429, 503)},
            },
        },
        "/api/batches": {"get": {"summary": "The tenant's batches, newest first", "security": BEARER,
                                 "parameters": [*TENANT_HEADER, *_page_params(),
                                                {"name": "batchType", "in": "query", "required": False,
                                                 "schema": {"type": "string", "enum": list(BATCH_TYPES)}},
                                                {"name": "status", "in": "query", "required": False,
                                                 "schema": {"type": "string", "enum": list(STATUSES)}}],
                                 "responses": {**_ok("A page of batches"), **_errors(400, 401, 403)}}},
        "/api/batches/{batchId}": {"get": {
            "summary": "One batch's status", "security": BEARER,
            "parameters": [_path_param("batchId", "From the upload's 202"), *TENANT_HEADER,
                           {"name": "includePendingDetails", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["true", "false"]}}],
            "responses": {**_ok("The batch"), **_errors(400, 401, 403, 404)}}},
        "/api/batches/{batchId}/records": {"get": {
            "summary": "Every record's outcome, in index order (those the workers have reached); "
                       "Accept: application/x-ndjson streams them all",
            "security": BEARER,
            "parameters": [_path_param("batchId", "From the upload's 202"), *TENANT_HEADER,
                           {"name": "status", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": list(RECORD_STATUSES)}},
                           {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
            "responses": {**_ok("A page of record outcomes (or all, as NDJSON)"),
                          **_errors(400, 401, 403, 404)}}},
        "/api/batches/{batchId}/events": {"get": {
            "summary": "Live progress (Server-Sent Events): `progress` at once and at every change, then "
                       "`completed` with the whole batch; resumable with Last-Event-ID",
            "security": BEARER,
            "parameters": [_path_param("batchId", "From the upload's 202"), *TENANT_HEADER,
                           {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                            "description": "The id of the last event seen: only newer ones are sent"}],
            "responses": {"200": {"description": "An event stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          "204": {"description": "The client has seen `completed`: nothing more will come"},
                          **_errors(401, 403, 404)}}},
        "/api/resources/{schema}": {
            "get": {"summary": "The tenant's resources of a schema", "security": BEARER,
                    "parameters": [SCHEMA, *TENANT_HEADER, *_page_params()],
                    "responses": {**_ok("A page of resources"), **_errors(400, 401, 403, 404)}},
            "post": {"summary": "Create (or merge) one resource; waits for its outcome up to REACH_SYNC_WAIT_S",
                     "security": BEARER, "parameters": [SCHEMA, *TENANT_HEADER, ON_CONFLICT, IGNORE_UNKNOWN],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": SINGLE_BODY}}},
                     "responses": {**_ok("The resource as saved"),
                                   **_ok("Accepted; the outcome was not known in time (batch shape)", 202),
                                   **_errors(400, 401, 403, 404, 409, 413, 429, 503)}},
        },
        "/api/resources/{schema}/{externalId}": {
            "get": {"summary": "One resource", "security": BEARER,
                    "parameters": [SCHEMA, _path_param("externalId", "The resource's external id"), *TENANT_HEADER,
                                   {"name": "include", "in": "query", "required": False, "schema": {"type": "string"},
                                    "description": "Reference fields whose resources to return in `included`"}],
                    "responses": {**_ok("The resource"), **_errors(400, 401, 403, 404)}},
            "patch": {"summary": "Patch one existing resource (RFC 7396); waits for its outcome up to "
                                 "REACH_SYNC_WAIT_S",
                      "security": BEARER,
                      "parameters": [SCHEMA, _path_param("externalId", "The resource's external id"), *TENANT_HEADER,
                                     IGNORE_UNKNOWN],
                      "requestBody": {"required": True, "content": {"application/json": {"schema": SINGLE_BODY}}},
                      "responses": {**_ok("The resource as saved"),
                                    **_ok("Accepted; the outcome was not known in time (batch shape)", 202),
                                    **_errors(400, 401, 403, 404, 413, 429, 503)}},
            "delete": {"summary": "Delete one resource; waits for its outcome up to REACH_SYNC_WAIT_S",
                       "security": BEARER,
                       "parameters": [SCHEMA, _path_param("externalId", "The resource's external id"), *TENANT_HEADER,
                                      {"name": "cascade", "in": "query", "required": False,
                                       "schema": {"type": "string", "enum": ["true", "false"], "default": "false"}}],
                       "responses": {**_ok("Deleted"),
                                     **_ok("Accepted; the outcome was not known in time (batch shape)", 202),
                                     **_errors(400, 401, 403, 404, 409, 429, 503)}},
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)
