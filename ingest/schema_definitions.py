"""The partner API for schema definitions: `/partner/schema-definitions` (docs/api.md section 3)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import partner_principal
from ingest.context import ingress_of
from ingest.responses import ApiError, iso_ms, ok, with_snake_case
from ingest.uploads import schema_not_found
from schemas.definition_view import DefinitionView
from schemas.definitions import (
    Definition,
    DefinitionError,
    deactivated_definition,
    new_definition,
    updated_definition,
)


def definition_view(d: Definition) -> dict[str, Any]:
    """The API's representation of a definition, in camelCase and snake_case."""
    return with_snake_case({
        "id": d.id, "platformId": d.partnerId, "name": d.name, "pluralName": d.pluralName,
        "description": d.description, "category": d.category, "externalIdField": d.externalIdField,
        "schema": d.schema, "referenceSchemas": d.referenceSchemas, "versionNumber": d.versionNumber,
        "fieldsToExpose": d.fieldsToExpose, "exposeNameJsonPath": d.exposeNameJsonPath,
        "createdAt": iso_ms(d.createdAt / 1000), "updatedAt": iso_ms(d.updatedAt / 1000),
        "deactivatedAt": iso_ms(d.deactivatedAt / 1000) if d.deactivatedAt else None,
    })


async def json_body(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from None


def _registry(request: Request) -> DefinitionView:
    return ingress_of(request).definitions


async def _lookup(request: Request, partner_id: str) -> Definition:
    name = request.path_params["id_or_name"]
    found = await _registry(request).find_fresh(partner_id, name)
    if found is None:
        raise schema_not_found(name)
    return found


async def _write(request: Request, definition: Definition) -> None:
    try:
        async with asyncio.timeout(ingress_of(request).settings.produce_timeout_s):
            refused = await _registry(request).write(ingress_of(request).kafka.producer, definition)
    except (KafkaError, TimeoutError) as exc:
        raise ApiError(503, f"The schema definition could not be stored durably: {exc}") from None
    if refused is not None:
        raise ApiError(409, refused)


def _resolver(registry: DefinitionView, partner_id: str):  # noqa: ANN202 - a Resolver
    return lambda name: registry.find(partner_id, name)


def _as_api_error(exc: DefinitionError) -> ApiError:
    return ApiError(exc.status, exc.message, exc.errors)


async def create(request: Request) -> Response:
    principal = partner_principal(request, ingress_of(request).settings.partner_secrets)
    body = await json_body(request)
    registry = _registry(request)
    async with registry.write_lock():
        await registry.sync()
        try:
            definition = new_definition(principal.partner_id, body, _resolver(registry, principal.partner_id))
        except DefinitionError as exc:
            raise _as_api_error(exc) from None
        clash = registry.clash(definition)
        if clash is not None:
            raise ApiError(409, f"A schema definition named '{clash.name}' already exists")
        await _write(request, definition)
    return ok(definition_view(definition), "Schema definition created")


async def list_all(request: Request) -> Response:
    principal = partner_principal(request, ingress_of(request).settings.partner_secrets)
    await _registry(request).sync()
    return ok([definition_view(d) for d in _registry(request).active(principal.partner_id)])


async def get_one(request: Request) -> Response:
    principal = partner_principal(request, ingress_of(request).settings.partner_secrets)
    return ok(definition_view(await _lookup(request, principal.partner_id)))


async def update(request: Request) -> Response:
    principal = partner_principal(request, ingress_of(request).settings.partner_secrets)
    body = await json_body(request)
    registry = _registry(request)
    async with registry.write_lock():
        await registry.sync()
        current = await _lookup(request, principal.partner_id)
        try:
            definition = updated_definition(current, body, _resolver(registry, principal.partner_id))
        except DefinitionError as exc:
            raise _as_api_error(exc) from None
        await _write(request, definition)
    return ok(definition_view(definition), "Schema definition updated")


async def deactivate(request: Request) -> Response:
    principal = partner_principal(request, ingress_of(request).settings.partner_secrets)
    registry = _registry(request)
    async with registry.write_lock():
        await registry.sync()
        current = await _lookup(request, principal.partner_id)
        users = registry.referencing(current)
        if users:
            names = ", ".join(sorted(d.name for d in users))
            raise ApiError(409, f"Schema definition is referenced by active definitions: {names}")
        definition = deactivated_definition(current)
        await _write(request, definition)
    return ok(definition_view(definition), "Schema definition deactivated")


routes = [
    Route("/partner/schema-definitions", create, methods=["POST"]),
    Route("/partner/schema-definitions", list_all, methods=["GET"]),
    Route("/partner/schema-definitions/{id_or_name}", get_one, methods=["GET"]),
    Route("/partner/schema-definitions/{id_or_name}", update, methods=["POST"]),
    Route("/partner/schema-definitions/{id_or_name}", deactivate, methods=["DELETE"]),
]
