"""`reach worker`: run one Faust worker process (several may share one Kafka cluster)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys

import faust
import uvloop

from processors.app import create_app, worker_datadir
from reach.config import Settings
from topics import create_topics, service_topics

log = logging.getLogger(__name__)
RUNNING_MARKER = "RUNNING"


def discard_state_after_crash(settings: Settings) -> bool:
    """Delete the local stores if the last run of this worker did not stop cleanly.

    RocksDB is written as events are processed, before their Kafka transaction commits; after
    a crash it may hold changes of transactions that were aborted. The committed changelog is
    the truth, and Faust rebuilds the stores from it (as Kafka Streams does under EOS).
    """
    datadir = worker_datadir(settings)
    marker = datadir / RUNNING_MARKER
    crashed = marker.exists()
    if crashed:
        for tables in datadir.glob("v*/tables"):
            shutil.rmtree(tables)
    datadir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return crashed


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # also for Faust's consumer thread
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust runs on this loop after the topics exist
    loop.run_until_complete(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    if discard_state_after_crash(settings):
        print("reach worker: the last run did not stop cleanly; rebuilding state from Kafka", flush=True)
    app = create_app(settings)
    sys.argv = ["reach-worker", "worker", "--loglevel", "info", *(argv or [])]
    clean = False
    try:
        app.main()
        clean = True
    except SystemExit as exit_:
        clean = exit_.code in (0, None)
        raise
    finally:
        if clean:
            flush_stores(app)
            (worker_datadir(settings) / RUNNING_MARKER).unlink(missing_ok=True)


def flush_stores(app: faust.App) -> None:
    """Persist what the stores still hold in memory (they are written without a log)."""
    for table in app.tables.values():
        for db in table.data._dbs.values():
            db.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
