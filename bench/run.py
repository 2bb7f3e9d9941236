"""The benchmark suite: `make bench` (or `.venv/bin/python -m bench.run`).

Runs against a fresh local stack (its own broker on free ports, unless KAFKA_BOOTSTRAP_SERVERS
is set; one ingress and one worker as real processes) and measures, side by side with what a
bare Kafka client does on the same machine in the same run:

- HTTP ingest: records/s accepted (202) with 1000-record batches of ~250-byte records, at a
  few concurrency levels, next to aiokafka sending the same messages as record batches
  (`create_batch`/`send_batch`) and to Kafka's own Java `ProducerPerformance` sending records of
  the same size, all with the same acks (all, idempotent) (`bench.baselines`);
- end to end: records/s from the first POST until every batch is terminal (one worker), next
  to a bare aiokafka consume-and-merge loop over the same messages into a dict, to a bare
  exactly-once loop (state in RocksDB, a message per resource, a transaction every 100 ms), and
  to the peer a user would write instead: a Kafka Streams application (`bench.streams_peer`);
  the service and the bare exactly-once loop alternate for three rounds, medians reported;
- the worker's CPU per record for direct batches whose messages are on another partition than
  their owner's (handed on, `processors.hand_on`), next to the same on their own partitions;
- latency of one 1000-record batch, POST → terminal status: p50/p99 idle and under load;
- references (`bench.references`): records with 0, 1 and 3 references end to end, a cascade
  over two levels, and dependency release p50/p99, idle and under load;
- deletes: records/s deleting 100,000 resources by id, and a deleteAll;
- single-resource write latency (`POST /api/resources/{schema}`, answered with the outcome);
- fairness: one tenant's single 1000-record batches, idle and while another tenant uploads
  continuously at its full quota (`ingest.quotas`; a quarter, then half the measured end-to-end
  rate), with a burst of a minute's worth (the default) and of one batch (paced);
- peak memory (VmHWM) of the ingress and the worker.

Writes `bench/results/results.json` and `bench/results/results.png`, and prints a table.
Figures are measurements, not pass/fail checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.baselines import bare_exactly_once_loop, bare_merge_loop, producer_performance, send_batch_producer
from bench.direct import ingest_batches, measure_hand_on, produce_with_confluent
from bench.fairness import measure_fairness, single_batch_latencies
from bench.references import measure_references
from bench.report import chart, table
from bench.stack import (
    RECORD_BYTES,
    RESULTS,
    Stack,
    batch_body,
    percentile,
    post_batches,
    wait_all_terminal,
)
from bench.streams_peer import streams_merge
from bench.workers import measure_two_workers
from bench.writes import measure_writes
from topics import create_topics
from topics.definitions import TopicSpec


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median records/s (the upper middle one of an even number)."""
    return sorted(rounds, key=lambda r: r["records_per_s"])[len(rounds) // 2]


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"ingest": [], "send_batch": []}
    bootstrap = stack.settings.bootstrap_servers
    scratch_topic = f"{stack.settings.topic_prefix}.bench-raw"
    await create_topics(bootstrap, [TopicSpec(scratch_topic, stack.settings.topic_partitions, 1)])
    await post_batches(stack, [batch_body("warmup", 1000)], 1)  # first-use costs out of the way

    # 1. HTTP ingest vs aiokafka sending the same messages as record batches, and Kafka's own
    # Java producer sending records of the same size (the worker keeps up meanwhile).
    for concurrency in args.concurrency:
        bodies = [batch_body(f"in{concurrency}-{b}") for b in range(args.ingest_batches)]
        seconds, ids, _ = await post_batches(stack, bodies, concurrency)
        results["ingest"].append({"concurrency": concurrency, "records_per_s": len(bodies) * 1000 / seconds})
        await wait_all_terminal(stack, ids)  # drain before the baseline runs
        raw_seconds = await send_batch_producer(bootstrap, scratch_topic,
                                                ingest_batches(stack, args.ingest_batches, f"raw{concurrency}-"),
                                                concurrency)
        results["send_batch"].append({"concurrency": concurrency,
                                      "records_per_s": args.ingest_batches * 1000 / raw_seconds})
        print(f"ingest c={concurrency}: {results['ingest'][-1]['records_per_s']:,.0f} rec/s; "
              f"aiokafka send_batch {results['send_batch'][-1]['records_per_s']:,.0f} rec/s", flush=True)
    # The same at the highest level with the worker paused: the ingress and the broker alone on
    # the machine's cores, as where workers run on other machines (paused for far less than
    # the session timeout, so its partitions stay with it).
    concurrency = max(args.concurrency)
    bodies = [batch_body(f"alone{concurrency}-{b}") for b in range(args.ingest_batches)]
    stack.worker.proc.send_signal(signal.SIGSTOP)
    cpu = stack.cpu_share()
    try:
        seconds, ids, _ = await post_batches(stack, bodies, concurrency)
        cores = cpu.cores()
    finally:
        stack.worker.proc.send_signal(signal.SIGCONT)
    cores.pop("worker", None)
    results["ingest_alone"] = {"concurrency": concurrency, "records_per_s": len(bodies) * 1000 / seconds,
                               "cores": cores}
    await wait_all_terminal(stack, ids)
    print(f"ingest c={concurrency}, worker paused: {results['ingest_alone']['records_per_s']:,.0f} rec/s", flush=True)
    performance_topic = f"{stack.settings.topic_prefix}.bench-java"
    await create_topics(bootstrap, [TopicSpec(performance_topic, stack.settings.topic_partitions, 1)])
    results["producer_performance"] = {"record_bytes": RECORD_BYTES, "records": args.java_records,
                                       "records_per_s": await asyncio.to_thread(
                                           producer_performance, bootstrap, performance_topic, args.java_records,
                                           RECORD_BYTES)}
    print(f"Kafka ProducerPerformance ({RECORD_BYTES}-byte records): "
          f"{results['producer_performance']['records_per_s']:,.0f} rec/s", flush=True)

    # 2. End to end: first POST → every batch terminal, next to a bare consume-and-merge loop.
    # The service and the bare exactly-once loop alternate for `--e2e-rounds` rounds and each
    # row is the median round: the machine's speed drifts by tens of percent within minutes,
    # and their ratio is what the service is judged by.
    raw_events = args.ingest_batches * len(args.concurrency) * 1000
    output_topic = f"{stack.settings.topic_prefix}.bench-states"
    await create_topics(bootstrap, [TopicSpec(output_topic, stack.settings.topic_partitions, 1)])
    rounds: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    for r in range(args.e2e_rounds):
        # Round 0's customers are `e2e-<b>-<i>` (bench.writes deletes them); later rounds' are new too.
        bodies = [batch_body(f"e2e-{b}" if r == 0 else f"e2e.r{r}-{b}") for b in range(args.e2e_batches)]
        started, cpu = time.monotonic(), stack.cpu_share()
        _, ids, _ = await post_batches(stack, bodies, 4)
        # Each poll costs this client, the ingress and the reader about a millisecond of CPU
        # together; every 50 ms is still within 0.5 % of the run.
        finished = await wait_all_terminal(stack, ids, poll_s=0.05)
        rounds.append({"batches": len(bodies), "records_per_s": len(bodies) * 1000 / (finished - started),
                       "seconds": finished - started, "cores": cpu.cores()})
        cpu = stack.cpu_share()
        bare = await bare_exactly_once_loop(bootstrap, scratch_topic, output_topic, raw_events,
                                            stack.workdir / f"bare-eos-{r}")
        cores = cpu.cores()
        cores["loop"] = cores.pop("client")  # the loop runs in this process
        loops.append({"records_per_s": raw_events / bare, "cores": cores})
        print(f"end to end, round {r + 1} of {args.e2e_rounds}: {rounds[-1]['records_per_s']:,.0f} rec/s; "
              f"bare exactly-once loop {loops[-1]['records_per_s']:,.0f} rec/s", flush=True)
    results["end_to_end"] = {**_median_round(rounds), "rounds": [r["records_per_s"] for r in rounds]}
    results["bare_exactly_once_loop"] = {**_median_round(loops), "rounds": [r["records_per_s"] for r in loops]}
    bare = await bare_merge_loop(bootstrap, scratch_topic, raw_events)
    results["bare_merge_loop"] = {"records_per_s": raw_events / bare}
    cpu = stack.cpu_share()
    peer = await asyncio.to_thread(streams_merge, bootstrap, scratch_topic, raw_events, stack.workdir / "streams-peer")
    results["kafka_streams_peer"] = {"records_per_s": raw_events / peer, "cores": cpu.cores()}
    print(f"end to end: {results['end_to_end']['records_per_s']:,.0f} rec/s; bare merge loop "
          f"{results['bare_merge_loop']['records_per_s']:,.0f} rec/s; bare exactly-once loop "
          f"{results['bare_exactly_once_loop']['records_per_s']:,.0f} rec/s; Kafka Streams peer "
          f"{results['kafka_streams_peer']['records_per_s']:,.0f} rec/s; cores used "
          f"{ {k: round(v, 2) for k, v in results['end_to_end']['cores'].items()} }", flush=True)

    # The same records written straight to the ingest topic by the stock Confluent client: no
    # HTTP and no ingress, the Confluent wire format instead of the schemaless one.
    # With its default partitioner, then with Kafka's Java one (nothing handed on).
    for name, partitioner in (("end_to_end_confluent", None), ("end_to_end_confluent_murmur2", "murmur2_random")):
        started, cpu = time.monotonic(), stack.cpu_share()
        ids = await asyncio.to_thread(produce_with_confluent, stack, args.direct_batches, f"{name}-", partitioner)
        finished = await wait_all_terminal(stack, ids)
        results[name] = {"batches": len(ids), "records_per_s": len(ids) * 1000 / (finished - started),
                         "seconds": finished - started, "cores": cpu.cores()}
        print(f"end to end, stock Confluent producer writing the ingest topic, partitioner "
              f"{partitioner or 'default'}: {results[name]['records_per_s']:,.0f} rec/s", flush=True)
    await measure_hand_on(stack, args, results)

    # 3. Latency of one batch, idle and under half of the measured end-to-end rate.
    idle = await single_batch_latencies(stack, args.latency_runs, "idle")
    half_rate = results["end_to_end"]["records_per_s"] / 2 / 1000  # batches per second
    stop = asyncio.Event()

    async def background_load() -> None:
        n = 0
        while not stop.is_set():
            await post_batches(stack, [batch_body(f"bg-{n}")], 1)
            n += 1
            await asyncio.sleep(1 / half_rate)

    load = asyncio.create_task(background_load())
    loaded = await single_batch_latencies(stack, args.latency_runs, "loaded")
    stop.set()
    await load
    results["latency_s"] = {
        "idle": {"p50": percentile(idle, 50), "p99": percentile(idle, 99), "runs": idle},
        "half_load": {"p50": percentile(loaded, 50), "p99": percentile(loaded, 99), "runs": loaded},
    }
    print(f"latency idle p50 {percentile(idle, 50) * 1000:.0f} ms p99 {percentile(idle, 99) * 1000:.0f} ms; "
          f"half load p50 {percentile(loaded, 50) * 1000:.0f} ms p99 {percentile(loaded, 99) * 1000:.0f} ms",
          flush=True)

    # 4. References: records with 0, 1 and 3 of them, a cascade, dependency release (bench.references).
    results["references"] = await measure_references(stack, args.reference_batches, args.cascade_roots,
                                                     args.release_runs)

    await measure_writes(stack, args, results)
    await measure_fairness(stack, args, results)
    await measure_two_workers(stack, args, results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--ingest-batches", type=int, default=50, help="batches per concurrency level")
    parser.add_argument("--e2e-batches", type=int, default=200)
    parser.add_argument("--e2e-rounds", type=int, default=3,
                        help="rounds of end to end, each followed by the bare exactly-once loop (medians reported)")
    parser.add_argument("--direct-batches", type=int, default=50,
                        help="batches a stock Confluent producer writes straight to the ingest topic")
    parser.add_argument("--java-records", type=int, default=500_000, help="records ProducerPerformance sends")
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--release-runs", type=int, default=20)
    parser.add_argument("--reference-batches", type=int, default=20,
                        help="1000-record batches of records with 0, 1 and 3 references each")
    parser.add_argument("--delete-records", type=int, default=100_000, help="deleted by id (a multiple of 1000)")
    parser.add_argument("--cascade-roots", type=int, default=10_000,
                        help="customers deleted with cascade, each with an order and its shipment (a multiple of 1000)")
    parser.add_argument("--single-writes", type=int, default=200)
    parser.add_argument("--delete-all", type=int, default=100_000, help="resources of the schema deleteAll deletes")
    parser.add_argument("--fairness-runs", type=int, default=20, help="batches timed idle and beside a bulk tenant")
    parser.add_argument("--bulk-share", type=float, nargs="+", default=[0.25, 0.5],
                        help="the bulk tenant's quota, as shares of the measured end-to-end rate (a run each)")
    args = parser.parse_args()
    if args.delete_records % 1000 or args.cascade_roots % 1000 or args.delete_records // 1000 > args.e2e_batches:
        parser.error("--delete-records and --cascade-roots are multiples of 1000, and --delete-records at most "
                     "--e2e-batches thousands (it deletes the customers of the end-to-end run)")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reach-bench-") as tmp, Stack(Path(tmp)) as stack:
        results = asyncio.run(measure(stack, args))
    results["peak_mb"] = stack.peak_mb
    results["machine"] = {
        "summary": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                   f"Python {platform.python_version()}",
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "broker": "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "local Kafka 4.1.2 on the same machine",
        "args": vars(args), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    chart(results, RESULTS / "results.png")
    print(table(results))
    print(f"wrote {RESULTS / 'results.json'} and {RESULTS / 'results.png'}")

if __name__ == "__main__":
    main()
