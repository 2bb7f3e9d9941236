"""What every route reads from a request: its query options and its JSON body, checked
(docs/api.md 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request

from ingest import answer_budget
from ingest.responses import ApiError
from schemas.records import MAX_WAIT_S, ON_CONFLICT, BatchOptions


def choice(query: QueryParams, name: str, allowed: tuple[str, ...], default: str | None,
           problems: list[str]) -> str | None:
    """A query value from `allowed`; absent → `default`; present but not allowed (empty
    included) → a problem, and `default`."""
    if name not in query:
        return default
    value = query[name]
    if value not in allowed:
        problems.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        return default
    return value


def flag(query: QueryParams, name: str, problems: list[str]) -> bool:
    return choice(query, name, ("true", "false"), "false", problems) == "true"


def parse_options(query: QueryParams, with_conflict: bool = True, with_wait: bool = True
                  ) -> tuple[BatchOptions, list[str]]:
    """The write's options and every problem with the query values (strict: an empty value is
    a problem, not the default)."""
    problems: list[str] = []
    on_conflict = choice(query, "onconflict", ON_CONFLICT, "upsert", problems) if with_conflict else "upsert"
    ignore = flag(query, "ignoreUnknownFields", problems)
    wait = 0
    if with_wait and "dependencyWaitTimeout" in query:
        wait_raw = query["dependencyWaitTimeout"]
        wait = int(wait_raw) if wait_raw.isascii() and wait_raw.isdigit() and len(wait_raw) <= 6 else -1
        if not 0 <= wait <= MAX_WAIT_S:
            problems.append(f"dependencyWaitTimeout must be an integer from 0 to {MAX_WAIT_S} (got {wait_raw!r})")
    return BatchOptions(on_conflict or "upsert", ignore, max(wait, 0)), problems


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    started = asyncio.get_running_loop().time()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    answer_budget.spent_on_client(request, asyncio.get_running_loop().time() - started)
    return b"".join(chunks)


def json_object(body: bytes, shape: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying it is not JSON or not `shape`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"the body must be an object with {shape}")
    return parsed
