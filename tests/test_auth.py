"""Authentication and tenancy (docs/api.md §2): who may call what, and the error envelope (§1)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from starlette.testclient import TestClient

from tests.support import PARTNER_SECRETS, bearer, partner_token, tenant_token

PARTNER_PATH = "/partner/schema-definitions"
API_PATH = "/api/batches"

# The test secrets are short on purpose; PyJWT warns about that.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
def ingress(module_ingress: TestClient) -> TestClient:
    """One deployment for the module: no test here changes anything (each request is refused,
    or reads), so each still sees an empty one."""
    return module_ingress


def _b64url(obj: dict) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned_token(payload: dict) -> str:
    """An `alg: none` JWT: header + payload, empty signature."""
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(payload)}."


def _partner_claims(partner: str = "partner-a") -> dict:
    now = int(time.time())
    return {"partnerId": partner, "type": "partner", "iat": now, "exp": now + 600}


def _assert_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["success"] is False, body
    assert isinstance(body.get("message"), str) and body["message"].strip(), body
    if "errors" in body:
        assert isinstance(body["errors"], list), body
        assert all(isinstance(e, str) for e in body["errors"]), body
    return body


def _assert_batches_listed(response) -> None:
    assert response.status_code == 200, (response.status_code, response.text)
    body = response.json()
    assert body["success"] is True, body
    assert isinstance(body["data"]["results"], list), body


# --- tokens that never authenticate ------------------------------------------------------

def _rejected_tokens() -> dict[str, dict[str, str]]:
    """Headers that must all be answered with 401, by case name."""
    claims = _partner_claims()
    return {
        "missing-authorization-header": {},
        "basic-scheme": {"Authorization": "Basic " + base64.b64encode(b"partner-a:secret-a").decode()},
        "token-without-bearer-scheme": {"Authorization": partner_token()},
        "bearer-without-token": {"Authorization": "Bearer"},
        "bearer-empty-token": {"Authorization": "Bearer "},
        "garbage-token": {"Authorization": "Bearer not-a-jwt-at-all"},
        "three-garbage-segments": {"Authorization": "Bearer aaa.bbb.ccc"},
        "wrong-secret": bearer(partner_token(secret="not-the-secret")),
        "signed-with-another-partners-secret": bearer(partner_token("partner-a", secret=PARTNER_SECRETS["partner-b"])),
        "alg-none": bearer(_unsigned_token(claims)),
        "hs512-with-right-secret": bearer(jwt.encode(claims, PARTNER_SECRETS["partner-a"], algorithm="HS512")),
        "hs384-with-right-secret": bearer(jwt.encode(claims, PARTNER_SECRETS["partner-a"], algorithm="HS384")),
        "missing-exp": bearer(partner_token(exp=None)),
        "past-exp": bearer(partner_token(ttl_s=-3600)),
        "unknown-partner": bearer(partner_token("partner-zzz", secret="some-secret")),
        "missing-partner-id": bearer(partner_token(partnerId=None)),
    }


@pytest.mark.parametrize("case", sorted(_rejected_tokens()))
def test_partner_routes_reject_unauthenticated_requests_with_401(ingress: TestClient, case: str) -> None:
    response = ingress.get(PARTNER_PATH, headers=_rejected_tokens()[case])
    _assert_error(response, 401)


@pytest.mark.parametrize("case", ["missing-authorization-header", "garbage-token", "wrong-secret", "alg-none",
                                  "hs512-with-right-secret", "missing-exp", "past-exp", "unknown-partner"])
def test_partner_create_rejects_unauthenticated_requests_with_401(ingress: TestClient, case: str) -> None:
    body = {"name": "Thing", "externalIdField": "id",
            "schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}
    response = ingress.post(PARTNER_PATH, json=body, headers=_rejected_tokens()[case])
    _assert_error(response, 401)
    # Nothing was created by the rejected call.
    listed = ingress.get(PARTNER_PATH, headers=bearer(partner_token()))
    assert listed.status_code == 200 and listed.json()["data"] == []


@pytest.mark.parametrize("case", sorted(_rejected_tokens()))
def test_api_routes_reject_unauthenticated_requests_with_401(ingress: TestClient, case: str) -> None:
    headers = {**_rejected_tokens()[case], "reach-tenant-id": "tenant-1"}
    _assert_error(ingress.get(API_PATH, headers=headers), 401)


def test_tenant_token_with_bad_signature_is_401(ingress: TestClient) -> None:
    token = tenant_token(secret="not-the-secret")
    _assert_error(ingress.get(API_PATH, headers=bearer(token)), 401)


def test_tenant_token_with_alg_none_is_401(ingress: TestClient) -> None:
    now = int(time.time())
    token = _unsigned_token({"partnerId": "partner-a", "tenantExternalId": "tenant-1", "exp": now + 600})
    _assert_error(ingress.get(API_PATH, headers=bearer(token)), 401)


def test_expired_tenant_token_is_401(ingress: TestClient) -> None:
    _assert_error(ingress.get(API_PATH, headers=bearer(tenant_token(ttl_s=-3600))), 401)


# --- /partner/* needs a partner token ------------------------------------------------------

def test_partner_token_lists_schema_definitions(ingress: TestClient) -> None:
    response = ingress.get(PARTNER_PATH, headers=bearer(partner_token()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["data"] == []


def test_token_without_iat_is_accepted(ingress: TestClient) -> None:
    response = ingress.get(PARTNER_PATH, headers=bearer(partner_token(iat=None)))
    assert response.status_code == 200, response.text


def test_every_configured_partner_authenticates_with_its_own_secret(ingress: TestClient) -> None:
    for partner in PARTNER_SECRETS:
        response = ingress.get(PARTNER_PATH, headers=bearer(partner_token(partner)))
        assert response.status_code == 200, (partner, response.text)


def test_tenant_token_on_partner_list_is_403(ingress: TestClient) -> None:
    _assert_error(ingress.get(PARTNER_PATH, headers=bearer(tenant_token())), 403)


def test_tenant_token_cannot_create_schema_definition(ingress: TestClient) -> None:
    body = {"name": "Thing", "externalIdField": "id",
            "schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}
    _assert_error(ingress.post(PARTNER_PATH, json=body, headers=bearer(tenant_token())), 403)
    listed = ingress.get(PARTNER_PATH, headers=bearer(partner_token()))
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_tenant_token_with_tenant_header_on_partner_route_is_still_403(ingress: TestClient) -> None:
    _assert_error(ingress.get(PARTNER_PATH, headers=bearer(tenant_token(), tenant="tenant-1")), 403)


# --- /api/* tenancy ----------------------------------------------------------------------

def test_partner_token_without_tenant_header_on_api_is_400(ingress: TestClient) -> None:
    _assert_error(ingress.get(API_PATH, headers=bearer(partner_token())), 400)


def test_partner_token_with_empty_tenant_header_on_api_is_400(ingress: TestClient) -> None:
    _assert_error(ingress.get(API_PATH, headers=bearer(partner_token(), tenant="")), 400)


def test_partner_token_naming_tenant_in_reach_tenant_id_header_is_accepted(ingress: TestClient) -> None:
    _assert_batches_listed(ingress.get(API_PATH, headers=bearer(partner_token(), tenant="tenant-1")))


def test_x_tenant_id_header_is_an_alias_of_reach_tenant_id(ingress: TestClient) -> None:
    headers = {**bearer(partner_token()), "X-Tenant-Id": "tenant-1"}
    _assert_batches_listed(ingress.get(API_PATH, headers=headers))


def test_tenant_token_acts_as_its_tenant_without_header(ingress: TestClient) -> None:
    _assert_batches_listed(ingress.get(API_PATH, headers=bearer(tenant_token())))


def test_tenant_token_with_header_naming_its_own_tenant_is_accepted(ingress: TestClient) -> None:
    _assert_batches_listed(ingress.get(API_PATH, headers=bearer(tenant_token(tenant="tenant-1"), tenant="tenant-1")))


def test_tenant_token_with_header_naming_another_tenant_is_403(ingress: TestClient) -> None:
    _assert_error(ingress.get(API_PATH, headers=bearer(tenant_token(tenant="tenant-1"), tenant="tenant-2")), 403)


def test_tenant_token_with_x_tenant_id_naming_another_tenant_is_403(ingress: TestClient) -> None:
    headers = {**bearer(tenant_token(tenant="tenant-1")), "X-Tenant-Id": "tenant-2"}
    _assert_error(ingress.get(API_PATH, headers=headers), 403)


def test_tenant_token_with_optional_claims_is_accepted(ingress: TestClient) -> None:
    token = tenant_token(email="ann@example.com", name="Ann", externalId="user-7")
    _assert_batches_listed(ingress.get(API_PATH, headers=bearer(token)))


def test_unauthenticated_api_request_without_tenant_header_is_401_not_400(ingress: TestClient) -> None:
    _assert_error(ingress.get(API_PATH), 401)
    _assert_error(ingress.get(API_PATH, headers=bearer(partner_token(secret="not-the-secret"))), 401)
