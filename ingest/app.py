"""The Starlette application of the ingress."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingest.kafka import KafkaGateway
from reach.config import Settings


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"success": True, "message": "ok", "data": {"status": "ok"}})


async def ready(request: Request) -> JSONResponse:
    """Readiness: the broker answers a metadata request."""
    gateway: KafkaGateway = request.app.state.kafka
    if await gateway.ready():
        return JSONResponse({"success": True, "message": "ready", "data": {"status": "ready"}})
    return JSONResponse({"success": False, "message": "Kafka is not reachable"}, status_code=503)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ingress app; its Kafka clients start and stop with the app's lifespan."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = KafkaGateway(settings)
        app.state.kafka = gateway
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=[Route("/health", health), Route("/ready", ready)],
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app
