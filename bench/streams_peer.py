"""The peer a user would pick instead of this service, measured by `make bench`.

A Kafka Streams application (`bench/streams/MergeApp.java`: Java, `exactly_once_v2`, a
RocksDB store whose changelog is keyed per resource, every other setting Kafka Streams'
default) reads the same ingest messages as the worker and merges each record into its
resource's state, as the worker and the bare loops of `bench.baselines` do. Its jars
(`org.apache.kafka:kafka-streams` 4.1.2, Avro to decode the messages, Jackson for JSON) come
from Maven Central into `.cache/`, as the broker's do, and javac builds the one class.

Alone: `python -m bench.streams_peer` fills a topic on its own broker and
prints the peer's rate next to the bare exactly-once loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.baselines import bare_exactly_once_loop, send_batch_producer
from bench.stack import record
from harness.processes import free_port
from reach.broker import LocalBroker, fetch_jars
from reach.config import PROJECT_ROOT
from schemas.events import build_ingest_batch
from topics import create_topics
from topics.definitions import TopicSpec

SOURCE = PROJECT_ROOT / "bench" / "streams" / "MergeApp.java"
POM = SOURCE.with_name("pom.xml")
CACHE = PROJECT_ROOT / ".cache" / "kafka-streams-peer"
AVRO_SCHEMA = PROJECT_ROOT / "schemas" / "ingest_event_v2.avsc"


def build(cache: Path = CACHE) -> Path:
    """The peer's classpath folder: its jars fetched and its class compiled, unless already there."""
    libs, classes = fetch_jars(cache / "libs", POM), cache / "classes"
    built = classes / "MergeApp.class"
    if not built.exists() or built.stat().st_mtime < SOURCE.stat().st_mtime:
        classes.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-cp", f"{libs}/*", "-d", str(classes), str(SOURCE)], check=True)
    return cache


def streams_merge(bootstrap: str, topic: str, records: int, state_dir: Path, timeout_s: float = 900) -> float:
    """Seconds the Kafka Streams peer takes from its first record of `topic` until `records`
    records are merged and committed (its JVM's start and its group's join not counted)."""
    cache = build()
    command = ["java", "-Xmx1g", "-cp", f"{cache}/libs/*:{cache}/classes", "MergeApp", bootstrap, topic,
               f"streams-peer-{uuid.uuid4().hex[:8]}", str(AVRO_SCHEMA), str(records), str(state_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    found = re.findall(r"processed (\d+) records in ([\d.E-]+) s", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"the Kafka Streams peer exited with {done.returncode}:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-3000:]}")
    return float(found[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=150_000, help="a multiple of 1000 (make bench: 150,000)")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reach-streams-") as tmp:
        broker = LocalBroker(work_dir=Path(tmp) / "kafka", port=free_port(), controller_port=free_port(),
                             heap="-Xms1g -Xmx1g")
        broker.start()
        try:
            topic, output = "peer-input", "peer-states"
            asyncio.run(create_topics(broker.bootstrap, [TopicSpec(topic, args.partitions, 1),
                                                         TopicSpec(output, args.partitions, 1)]))
            batches = [build_ingest_batch("bench", "tenant-1", "customer",
                                          [(r["id"], r) for r in (record(i, f"peer-{b}") for i in range(1000))],
                                          partitions=args.partitions) for b in range(args.records // 1000)]
            asyncio.run(send_batch_producer(broker.bootstrap, topic, batches, 4))
            started = time.monotonic()
            build()
            print(f"peer built in {time.monotonic() - started:.1f} s", flush=True)
            peer = streams_merge(broker.bootstrap, topic, args.records, Path(tmp) / "streams-state")
            bare = asyncio.run(bare_exactly_once_loop(broker.bootstrap, topic, output, args.records,
                                                      Path(tmp) / "bare-eos"))
            print(f"Kafka Streams peer: {args.records / peer:,.0f} rec/s; bare exactly-once loop "
                  f"{args.records / bare:,.0f} rec/s")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
