"""Cursor pagination: `?cursor=&limit=` (limit 1..100, default 20), opaque cursors."""

from __future__ import annotations

import base64
import binascii

from starlette.datastructures import QueryParams

from ingest.responses import ApiError


def page_limit(query: QueryParams, default: int = 20, maximum: int = 100) -> int:
    raw = query.get("limit", str(default))  # present but empty is a mistake, not the default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"limit must be an integer from 1 to {maximum} (got {raw!r})")
    return int(raw)


def encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "cursor is not valid") from None
