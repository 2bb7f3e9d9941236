"""Resource reads: `GET /api/resources/{schema}[/{externalId}]` (docs/api.md section 6)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import tenant_principal
from ingest.context import ingress_of
from ingest.pagination import decode_cursor, encode_cursor, page_limit
from ingest.responses import ApiError, iso_ms, ok, with_snake_case
from ingest.uploads import find_definition
from schemas.events import Resource

# A read sees every write committed before it; when Kafka cannot say what that is in time (a
# node down, no quorum), it answers from what the readers hold rather than 503: reads go on
# through an outage, at worst without the writes of its last moments.
READS = "try"


def resource_view(resource: Resource) -> dict[str, Any]:
    return with_snake_case({
        "id": resource["id"], "schemaDefinitionId": resource["schemaDefinitionId"],
        "platformId": resource["platformId"], "businessId": resource["businessId"],
        "resourceExternalId": resource["resourceExternalId"],
        "createdAt": iso_ms(resource["createdAt"] / 1000), "updatedAt": iso_ms(resource["updatedAt"] / 1000),
        "data": resource["data"],
    })


async def get_resource(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    include = [f for f in (request.query_params.get("include") or "").split(",") if f]
    by_field = {r.name: r for r in definition.referenceFields}
    unknown = [f for f in include if f not in by_field]
    if unknown:
        raise ApiError(400, f"include names fields that are not references of {definition.name}: {', '.join(unknown)}")
    external_id = request.path_params["external_id"]
    resource = await state.resources.get(principal.partner_id, principal.tenant_id, definition.id, external_id, READS)
    if resource is None:
        raise ApiError(404, "Resource not found")
    wanted: dict[tuple[str, str], None] = {}  # in order, each once
    for name in include:
        field = by_field[name]
        value = resource["data"].get(name)
        for target in value if isinstance(value, list) else [value]:
            if target is not None:
                wanted[(field.target_id, str(target))] = None
    found = (await state.resources.get_many(principal.partner_id, principal.tenant_id, list(wanted), READS)
             if wanted else [])
    return ok({"result": resource_view(resource), "included": [resource_view(r) for r in found if r is not None]})


async def list_resources(request: Request) -> Response:
    state = ingress_of(request)
    principal = tenant_principal(request, state.settings.partner_secrets)
    definition = await find_definition(request, principal.partner_id)
    limit = page_limit(request.query_params)
    after = decode_cursor(request.query_params.get("cursor"))
    page, total, has_next = await state.resources.page(principal.partner_id, principal.tenant_id, definition.id, after,
                                                       limit, READS)
    return ok({
        "results": [resource_view(r) for r in page],
        "pagination": {"hasNextPage": has_next, "total": total,
                       "cursor": encode_cursor(page[-1]["resourceExternalId"]) if has_next else None},
    })


routes = [
    Route("/api/resources/{schema}", list_resources, methods=["GET"]),
    Route("/api/resources/{schema}/{external_id}", get_resource, methods=["GET"]),
]
