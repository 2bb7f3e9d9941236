"""The Starlette application of the ingress."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import schema_definitions
from ingest.kafka import KafkaGateway
from ingest.responses import ApiError, JSONResponse, ok
from reach.config import Settings
from schemas.registry import SchemaRegistry
from topics import service_topics

log = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    """Liveness: the process answers."""
    return ok({"status": "ok"}, "ok")


async def ready(request: Request) -> Response:
    """Readiness: the broker answers a metadata request."""
    gateway: KafkaGateway = request.app.state.kafka
    if await gateway.ready():
        return ok({"status": "ready"}, "ready")
    return ApiError(503, "Kafka is not reachable").response()


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"success": False, "message": exc.detail}, status_code=exc.status_code)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ingress app; its Kafka clients start and stop with the app's lifespan."""
    settings = settings or Settings.from_env()
    topics = service_topics(settings)
    short = sorted(p for p, secret in settings.partner_secrets.items() if len(secret.encode()) < 32)
    if short:
        log.warning("partner secrets shorter than 32 bytes (weak for HS256): %s", ", ".join(short))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = KafkaGateway(settings)
        registry = SchemaRegistry(settings.bootstrap_servers, topics.schema_definitions.name)
        app.state.kafka, app.state.registry = gateway, registry
        await gateway.start()
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()
            await gateway.stop()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            *schema_definitions.routes,
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
