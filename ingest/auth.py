"""HS256 JWT authentication of partners and tenants (docs/api.md section 2)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning
from starlette.requests import Request

from ingest.responses import ApiError

# Secrets are the operator's choice: the ingress warns once at start-up about short ones
# instead of on every request.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a partner, acting for a tenant on `/api/*`."""

    partner_id: str
    tenant_id: str | None  # set for tenant tokens, and for partner tokens naming a tenant
    is_partner_token: bool


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message)


def authenticate(request: Request, partner_secrets: dict[str, str]) -> Principal:
    """Verify the bearer token of `request` against the partner's secret."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise _unauthorized("Missing or malformed Authorization header: expected 'Bearer <JWT>'")
    token = token.strip()
    try:
        header_fields = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise _unauthorized("Malformed token") from None
    if header_fields.get("alg") != "HS256":
        raise _unauthorized("Only HS256-signed tokens are accepted")
    partner_id = unverified.get("partnerId")
    secret = partner_secrets.get(partner_id) if isinstance(partner_id, str) else None
    if secret is None or not isinstance(partner_id, str):
        raise _unauthorized("Unknown partner")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise _unauthorized("Token expired") from None
    except jwt.MissingRequiredClaimError:
        raise _unauthorized("Token has no 'exp' claim") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("Invalid token signature or claims") from None
    tenant = claims.get("tenantExternalId")
    if claims.get("type") == "partner" and tenant is None:
        return Principal(partner_id, None, True)
    if not isinstance(tenant, str) or not tenant:
        raise _unauthorized("Token is neither a partner token nor names a tenant")
    return Principal(partner_id, tenant, False)


def partner_principal(request: Request, partner_secrets: dict[str, str]) -> Principal:
    """A caller of `/partner/*`: a partner token is required."""
    principal = authenticate(request, partner_secrets)
    if not principal.is_partner_token:
        raise ApiError(403, "A partner token is required for /partner endpoints")
    return principal


@dataclass(frozen=True)
class TenantPrincipal:
    """A caller of `/api/*` resolved to one tenant."""

    partner_id: str
    tenant_id: str
    is_partner_token: bool


def tenant_principal(request: Request, partner_secrets: dict[str, str]) -> TenantPrincipal:
    """A caller of `/api/*`, resolved to one tenant."""
    principal = authenticate(request, partner_secrets)
    named = request.headers.get("reach-tenant-id") or request.headers.get("x-tenant-id")
    if principal.is_partner_token:
        if not named:
            raise ApiError(400, "A partner token must name the tenant in the 'reach-tenant-id' header")
        return TenantPrincipal(principal.partner_id, named, True)
    if principal.tenant_id is None or (named and named != principal.tenant_id):
        raise ApiError(403, "The token's tenant does not match the 'reach-tenant-id' header")
    return TenantPrincipal(principal.partner_id, principal.tenant_id, False)
