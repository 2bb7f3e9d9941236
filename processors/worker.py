"""`reach worker`: run one Faust worker process (several may share one Kafka cluster)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import faust
import uvloop

from processors.app import create_app
from reach import seam
from reach.config import Settings
from topics import create_topics, service_topics

log = logging.getLogger(__name__)
RESTART_DELAY_S = 2.0  # between a crash and the next run: a broker that is away gets time


def main(argv: list[str] | None = None) -> None:
    """Run the worker; after a crash, start it again in this process (same pid) until stopped.

    A commit the broker could not confirm (it went away mid-commit) crashes Faust's consumer,
    as does any unexpected error: the worker's transactions must not commit half. A new run
    resumes from the committed offsets; its stores hold what committed transactions wrote, up to
    the changelog offsets recorded with it, and replay only what came after (`processors.transactions`).
    """
    argv = list(argv or [])
    if run(argv):
        return
    print(f"reach worker: stopped by an error; starting again in {RESTART_DELAY_S:.0f}s", flush=True)
    time.sleep(RESTART_DELAY_S)
    os.execv(sys.executable, [sys.executable, "-m", "processors.worker", *argv])


def run(argv: list[str]) -> bool:
    """One run of the worker until it stops; whether it stopped cleanly (exit code 0)."""
    settings = Settings.from_env()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # also for Faust's consumer thread
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust runs on this loop after the topics exist
    try:
        loop.run_until_complete(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    except Exception as exc:  # the broker is away: nothing was started yet
        log.error("reach worker: cannot create the topics: %r", exc)
        return False
    app = create_app(settings)
    sys.argv = ["reach-worker", "worker", "--loglevel", "info", *argv]
    clean = False
    try:
        app.main()
        clean = True
    except SystemExit as exit_:
        clean = exit_.code in (0, None)
    except (Exception, asyncio.CancelledError):  # Faust re-raises what crashed it
        log.exception("reach worker: crashed")
    finally:
        if clean:
            flush_stores(app)
    return clean


def flush_stores(app: faust.App) -> None:
    """Flush the stores' memtables: the next start then has no write-ahead log to replay."""
    for table in app.tables.values():
        for db in seam.table_stores(table):
            db.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
