"""`reach worker`: run one Faust worker process (several may share one Kafka cluster)."""

from __future__ import annotations

import asyncio
import sys

from reach.config import Settings
from processors.app import create_app
from topics import create_topics, service_topics


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust runs on this loop after the topics exist
    loop.run_until_complete(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    app = create_app(settings)
    sys.argv = ["reach-worker", "worker", "--loglevel", "info", *(argv or [])]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1:])
