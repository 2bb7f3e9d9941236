"""`/openapi.json` describes exactly the routes the ingress serves, with their methods."""

from __future__ import annotations

import re
from typing import cast

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from ingest.openapi import SPEC


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_openapi_json_describes_every_route_and_method_and_nothing_else(ingress: TestClient) -> None:
    served = {(_shape(route.path), method) for route in cast(Starlette, ingress.app).routes if isinstance(route, Route)
              for method in (route.methods or set()) - {"HEAD"}}
    response = ingress.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec == SPEC
    described = {(_shape(path), method.upper()) for path, item in spec["paths"].items()
                 for method in item if method != "parameters"}
    assert described == served
    for path, item in spec["paths"].items():  # every path parameter is declared
        declared = {p["name"] for p in item.get("parameters", [])} | {
            p["name"] for op in item.values() if isinstance(op, dict) for p in op.get("parameters", [])}
        assert set(re.findall(r"\{([^}]+)\}", path)) <= declared, path
