"""`reach worker`: run one Faust worker process (several may share one Kafka cluster)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time

import faust
import uvloop

from processors.app import create_app, worker_datadir
from reach.config import Settings
from topics import create_topics, service_topics

log = logging.getLogger(__name__)
RUNNING_MARKER = "RUNNING"
RESTART_DELAY_S = 2.0  # between a crash and the next run: a broker that is away gets time


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
    """Run the worker; after a crash, start it again in this process (same pid) until stopped.

    A commit the broker could not confirm (it went away mid-commit) crashes Faust's consumer,
    as does any unexpected error: the worker's transactions must not commit half. A new run
    resumes from the committed offsets with state rebuilt from Kafka, as after a SIGKILL.
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
    if discard_state_after_crash(settings):
        print("reach worker: the last run did not stop cleanly; rebuilding state from Kafka", flush=True)
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
            (worker_datadir(settings) / RUNNING_MARKER).unlink(missing_ok=True)
    return clean


def flush_stores(app: faust.App) -> None:
    """Persist what the stores still hold in memory (they are written without a log)."""
    for table in app.tables.values():
        for db in table.data._dbs.values():
            db.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
