"""`reach ingress`: serve the ingress with uvicorn (several may share one Kafka cluster)."""

from __future__ import annotations

import asyncio

import uvicorn

from ingest.app import create_app
from reach.config import Settings
from topics import create_topics, service_topics


def main() -> None:
    settings = Settings.from_env()
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port,
                log_level="info", access_log=False)


if __name__ == "__main__":
    main()
