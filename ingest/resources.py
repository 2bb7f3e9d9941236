"""Resource reads: `GET /api/resources/{schema}[/{externalId}]` (API.md section 6)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.batches import find_definition
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.responses import ApiError, iso_ms, ok, with_snake_case


def resource_view(resource: dict[str, Any]) -> dict[str, Any]:
    return with_snake_case({
        "id": resource["id"], "schemaDefinitionId": resource["schemaDefinitionId"],
        "platformId": resource["platformId"], "businessId": resource["businessId"],
        "resourceExternalId": resource["resourceExternalId"],
        "createdAt": iso_ms(resource["createdAt"] / 1000), "updatedAt": iso_ms(resource["updatedAt"] / 1000),
        "data": resource["data"],
    })


async def get_resource(request: Request) -> Response:
    state = request.app.state
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    include = [f for f in (request.query_params.get("include") or "").split(",") if f]
    by_field = {r.name: r for r in definition.referenceFields}
    unknown = [f for f in include if f not in by_field]
    if unknown:
        raise ApiError(400, f"include names fields that are not references of {definition.name}: {', '.join(unknown)}")
    await state.resources.sync()
    external_id = request.path_params["external_id"]
    resource = state.resources.get(principal.partner_id, principal.tenant_id, definition.id, external_id)
    if resource is None:
        raise ApiError(404, "Resource not found")
    included: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name in include:
        field = by_field[name]
        value = resource["data"].get(name)
        targets = value if isinstance(value, list) else [value]
        for target in targets:
            if target is None or (field.target_id, str(target)) in seen:
                continue
            seen.add((field.target_id, str(target)))
            found = state.resources.get(principal.partner_id, principal.tenant_id, field.target_id, str(target))
            if found is not None:
                included.append(resource_view(found))
    return ok({"result": resource_view(resource), "included": included})


async def list_resources(request: Request) -> Response:
    state = request.app.state
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    limit = page_limit(request.query_params)
    after = decode_cursor(request.query_params.get("cursor"))
    await state.resources.sync()
    page, total, has_next = state.resources.page(principal.partner_id, principal.tenant_id, definition.id, after, limit)
    return ok({
        "results": [resource_view(r) for r in page],
        "pagination": {"hasNextPage": has_next, "total": total,
                       "cursor": encode_cursor(page[-1]["resourceExternalId"]) if has_next else None},
    })


routes = [
    Route("/api/resources/{schema}", list_resources, methods=["GET"]),
    Route("/api/resources/{schema}/{external_id}", get_resource, methods=["GET"]),
]
