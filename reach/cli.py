"""The `reach` command: run the whole dev service or any one part of it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from reach.config import Settings
from reach.shutdown import StopRequested

USAGE = """\
usage: reach COMMAND

  run              the whole service in the foreground: broker (unless KAFKA_BOOTSTRAP_SERVERS
                   is set), topics, one worker, the readers and the ingress; Ctrl-C stops all of it
  broker start [--nodes 1|3] | start --node N | stop [--node N] | status | run
                   the local Kafka: one node, or a cluster of three (REACH_BROKER_NODES=3:
                   replication factor 3, min.insync.replicas 2); status prints a line per node
  topics           create the service's topics (harmless when they exist)
  worker           one Faust worker
  ingress          one HTTP ingress
  reader           one reader: the read models of its share of the partitions
                   (REACH_READER_INDEX of REACH_READER_URLS), asked by the ingresses
  upload FILE --schema NAME [--tenant T] [--concurrency N] [--batch-size N] [--no-wait] [--json]
                   load a .jsonl/.json/.csv file in batches with a live progress bar, safe
                   retries (Idempotency-Key) and failed records to failed.jsonl (reach upload --help)
  delete SCHEMA --tenant T (--id ID... | --ids-file FILE | --all) [--cascade] [--dry-run]
                   delete resources through the HTTP API, in batches of 1000, and wait for
                   the outcome (reach delete --help)
  dead-letters list | redrive OFFSET...
                   list the dead-letter topic; send chosen dead letters back to their topic
  token [--partner P] [--tenant T] [--ttl S]
                   print an HS256 token for a configured partner (default dev-partner)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command, rest = (args[0], args[1:]) if args else ("help", [])
    if command == "run":
        return run_all()
    if command == "broker":
        from reach.broker import main as broker_main
        return broker_main(rest)
    if command == "topics":
        from topics import create_topics, service_topics
        settings = Settings.from_env()
        created = asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
        print("created: " + (", ".join(created) or "nothing (all topics exist)"))
        return 0
    if command == "worker":
        from processors.worker import main as worker_main
        worker_main(rest)
        return 0
    if command == "ingress":
        from ingest.server import main as ingress_main
        ingress_main()
        return 0
    if command == "reader":
        from state.reader import main as reader_main
        reader_main()
        return 0
    if command == "upload":
        from reach.upload import main as upload_main
        return upload_main(rest)
    if command == "delete":
        from reach.delete import main as delete_main
        return delete_main(rest)
    if command == "dead-letters":
        from processors.dead_letters import main as dead_letters_main
        return dead_letters_main(rest)
    if command == "token":
        from reach.token import main as token_main
        return token_main(rest)
    print(USAGE, file=sys.stderr)
    return 0 if command in ("help", "-h", "--help") else 2


def run_all() -> int:
    """Start broker, worker and ingress; stop them in reverse order on SIGINT/SIGTERM."""
    from reach.broker import dev_broker
    from topics import create_topics, service_topics

    stop = StopRequested()
    settings = Settings.from_env()
    broker = None
    if not settings.external_broker:
        broker = dev_broker(settings)
        started = time.monotonic()
        if broker.start():
            print(f"reach: kafka up on {broker.bootstrap} in {time.monotonic() - started:.1f}s "
                  f"(log: {broker.log_file})", flush=True)
        else:
            print(f"reach: reusing the kafka already running on {broker.bootstrap}", flush=True)
            broker = None  # not ours to stop
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))

    # The parts find the broker (one node or a local cluster) and its replication from here.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "REACH_REPLICATION_FACTOR": str(settings.replication_factor)}
    # Own process groups: a terminal's Ctrl-C reaches only us, and we stop the parts in order.
    children = [
        subprocess.Popen([sys.executable, "-m", "processors.worker"], env=env, start_new_session=True),
        *(subprocess.Popen([sys.executable, "-m", "state.reader"], env={**env, "REACH_READER_INDEX": str(i)},
                           start_new_session=True) for i in range(len(settings.reader_urls))),
        subprocess.Popen([sys.executable, "-m", "ingest.server"], env=env, start_new_session=True),
    ]
    print(f"reach: ingress on http://{settings.http_host}:{settings.http_port}, "
          f"readers on {', '.join(settings.reader_urls)}, worker web on :{settings.worker_web_port}; "
          "Ctrl-C stops everything", flush=True)
    code = 0
    while not stop:
        if any(c.poll() is not None for c in children):
            code = 1
            print("reach: a part of the service exited; stopping the rest", file=sys.stderr, flush=True)
            break
        time.sleep(0.2)
    for child in reversed(children):
        _terminate(child)
    if broker is not None:
        broker.stop()
    print("reach: stopped", flush=True)
    return code


def _terminate(child: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
