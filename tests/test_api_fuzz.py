"""Schemathesis fuzzes every route of `/openapi.json` with valid tokens, over real HTTP against an
ingress process and a worker on the real broker: no answer may be a 5xx.

The description is loaded from `ingest.openapi` at collection time (Schemathesis's fixture
loader does not run on pytest 9); the fixture checks that the ingress serves exactly it.

Cases are both valid and invalid per the description (generation mode "all"). Three times in
four, path parameters naming a schema are swapped for a definition that exists and an upload's
records for ones shaped like that definition (with nulls, wrong types and unknown fields mixed
in), so that fuzzed input reaches record validation, Kafka and the worker instead of a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from ingest.openapi import SPEC
from tests.support import (
    CUSTOMER_SCHEMA,
    SUMMARY,
    ServiceProcess,
    bearer,
    isolated_settings,
    partner_token,
    readers,
    tenant_token,
    wait_ingress_ready,
    wait_terminal,
    wait_worker_ready,
)
from topics import create_topics, service_topics

EXAMPLES_PER_ROUTE = 80
CONFIG = SchemathesisConfig.from_dict({
    "generation": {"mode": "all", "max-examples": EXAMPLES_PER_ROUTE, "with-security-parameters": False},
})
API = schemathesis.openapi.from_dict(SPEC, config=CONFIG)
STATUSES: Counter[str] = Counter()  # "<method> <path> <status>" of every fuzzed request
ACCEPTED: list[str] = []  # batchIds of fuzzed uploads that got a 202


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=8)
VALID_RECORD = st.fixed_dictionaries(  # nulls delete optional fields
    {"id": st.text(min_size=1, max_size=20), "name": st.text(max_size=30)},
    optional={"age": st.integers(-2**63, 2**63 - 1) | st.none(), "tags": st.lists(st.text()) | st.none(),
              "address": st.fixed_dictionaries({"city": st.text()}, optional={"zip": st.text() | st.none()})},
)
MESSY_RECORD = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20) | st.integers(), "name": st.text(max_size=30) | JSON},
    optional={"age": st.integers() | JSON, "tags": st.lists(st.text()) | JSON,
              "address": st.fixed_dictionaries({"city": st.text()}, optional={"zip": JSON}) | JSON,
              "extra": JSON},
)
RECORDS = st.lists(VALID_RECORD, min_size=1, max_size=30) | st.lists(MESSY_RECORD, min_size=1, max_size=30)


@dataclass(frozen=True)
class Served:
    base_url: str
    partner_token: str
    tenant_token: str


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An ingress and a worker process of a deployment of this module alone; at the end, every
    accepted fuzzed upload must have been processed to a terminal status."""
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = isolated_settings(kafka_bootstrap, tmp / "data")
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    worker = ServiceProcess(["-m", "processors.worker"], settings, tmp / "worker.log").start()
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp / "ingress.log").start()
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(readers(settings, tmp))
        base = wait_ingress_ready(settings)
        wait_worker_ready(settings)
        assert httpx.get(f"{base}/openapi.json").json() == SPEC
        partner = partner_token(ttl_s=3600)
        for name in ("Customer", "Gadget"):
            created = httpx.post(f"{base}/partner/schema-definitions", headers=bearer(partner), json={
                "name": name, "externalIdField": "id", "schema": CUSTOMER_SCHEMA})
            assert created.status_code == 200, created.text
        served = Served(base, partner, tenant_token(ttl_s=3600))
        yield served
        with httpx.Client(base_url=base) as client:
            for batch_id in ACCEPTED:
                wait_terminal(client, batch_id, bearer(served.tenant_token), 120)
        _report()
    finally:
        ingress_code, worker_code = ingress.stop(), worker.stop()
        stack.close()
        assert ingress_code in (0, -15), ingress.log()[-3000:]  # uvicorn re-raises SIGTERM
        assert worker_code == 0, worker.log()[-3000:]
        assert "Traceback" not in ingress.log(), ingress.log()[-5000:]


@API.parametrize()
@API.given(known=st.sampled_from([True, True, True, False]), records=RECORDS)
@hypothesis_settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_route_answers_a_server_error(case: schemathesis.Case, known: bool, records: list[Any],
                                         served: Served) -> None:
    if known:  # a definition that exists; partner routes get one that no upload needs
        for name in ("schema", "idOrName"):
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = "customer" if case.path.startswith("/api/") else "gadget"
        if case.path.startswith("/api/") and case.headers:
            case.headers.pop("reach-tenant-id", None)  # the token names the tenant
        if case.path.endswith("/batch"):
            case.body = {"resources": records}
    token = served.partner_token if case.path.startswith("/partner/") else served.tenant_token
    response = case.call_and_validate(base_url=served.base_url, headers={"Authorization": f"Bearer {token}"},
                                      checks=[not_a_server_error], timeout=30)
    STATUSES[f"{case.method} {case.path} {response.status_code}"] += 1
    if response.status_code == 202:
        ACCEPTED.append(response.json()["data"]["batchId"])


def _report() -> None:
    by_status = Counter(key.rsplit(" ", 1)[1] for key in STATUSES.elements())
    SUMMARY.append(f"API fuzz: {sum(STATUSES.values())} requests, by status {dict(sorted(by_status.items()))}; "
                   f"{len(ACCEPTED)} fuzzed uploads accepted, all processed to a terminal status")
