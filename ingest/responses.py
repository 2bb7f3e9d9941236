"""The API's JSON envelopes, and an exception that carries an error response."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """A response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """Raised anywhere in a handler; becomes `{"success": false, ...}` with `status`."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None,
                 data: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors, self.data = status, message, errors, data
        self.headers = headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"success": False, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        if self.data is not None:
            body["data"] = self.data
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def ok(data: Any, message: str = "OK", status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "message": message, "data": data}, status_code=status)


def iso_ms(moment: datetime | float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a `Z`, from a datetime or epoch seconds."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def with_snake_case(data: dict[str, Any]) -> dict[str, Any]:
    """Every camelCase key also under its snake_case name (as Reach answers)."""
    out = dict(data)
    for key, value in data.items():
        snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
        out.setdefault(snake, value)
    return out
