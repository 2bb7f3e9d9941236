"""`reach token`: make an HS256 token for a configured partner (for curl and local testing)."""

from __future__ import annotations

import argparse
import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from reach.config import Settings


def make_token(settings: Settings, partner_id: str, tenant_id: str | None = None, ttl_s: int = 3600) -> str:
    """A partner token, or a tenant token when `tenant_id` is given, signed with the partner's secret."""
    secret = settings.partner_secrets.get(partner_id)
    if secret is None:
        raise SystemExit(f"unknown partner {partner_id!r}: not in REACH_PARTNER_SECRETS")
    now = int(time.time())
    claims: dict[str, object] = {"partnerId": partner_id, "iat": now, "exp": now + ttl_s}
    if tenant_id is None:
        claims["type"] = "partner"
    else:
        claims["tenantExternalId"] = tenant_id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the dev secret is short on purpose
        return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reach token", description=__doc__)
    parser.add_argument("--partner", default="dev-partner")
    parser.add_argument("--tenant", help="make a tenant token for this tenant")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    args = parser.parse_args(argv)
    print(make_token(Settings.from_env(), args.partner, args.tenant, args.ttl))
    return 0
