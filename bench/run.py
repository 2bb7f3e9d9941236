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
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.baselines import bare_exactly_once_loop, bare_merge_loop, producer_performance, send_batch_producer
from bench.references import measure_references
from bench.references import rows as reference_rows
from bench.stack import (
    RECORD_BYTES,
    RESULTS,
    SCHEMA,
    Stack,
    batch_body,
    cpu_seconds,
    end_to_end,
    percentile,
    post_batches,
    record,
    wait_all_terminal,
)
from bench.streams_peer import streams_merge
from harness.processes import ServiceProcess, free_port, wait_until
from reach.config import Quota
from reach.token import make_token
from schemas.events import build_ingest_batch, message_values
from topics import create_topics, service_topics
from topics.definitions import TopicSpec
from topics.partitioning import partition_for


def ingest_batches(stack: Stack, batches: int, tag: str) -> list[Any]:
    """The ingest messages the ingress would write for `batches` uploads of 1000 customers."""
    return [build_ingest_batch("bench", "tenant-1", stack.definition_id,
                               [(r["id"], r) for r in (record(i, f"{tag}{b}") for i in range(1000))],
                               partitions=stack.settings.topic_partitions) for b in range(batches)]


def produce_with_confluent(stack: Stack, batches: int, tag: str, partitioner: str | None = None) -> list[str]:
    """Write `batches` batches of 1000 customers to the ingest topic as a direct producer with the
    stock Confluent client and its default settings does: `IngestMessage` values, one per partition
    of each batch, framed by
    `AvroSerializer` with the schema it fetched from `/schema-registry`; their batch ids."""
    from confluent_kafka import SerializingProducer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import StringSerializer

    topic = service_topics(stack.settings).ingest.name
    registry = SchemaRegistryClient({"url": f"{stack.base}/schema-registry"})
    # `partitioner` None: librdkafka's default (consistent_random), which puts most messages
    # elsewhere than their owner partition; the worker hands them on (`processors.hand_on`).
    producer = SerializingProducer({
        "bootstrap.servers": stack.settings.bootstrap_servers,
        "enable.idempotence": True, "linger.ms": 5, "key.serializer": StringSerializer(),
        "value.serializer": AvroSerializer(registry, registry.get_latest_version(f"{topic}-value").schema.schema_str),
        **({"partitioner": partitioner} if partitioner else {})})
    ids = []
    for batch in ingest_batches(stack, batches, tag):
        ids.append(batch.batch_id)
        for key, value, _ in message_values(batch):
            producer.produce(topic, key=key.decode(), value=value)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the Confluent producer did not deliver everything in 120 s")
    return ids


async def produce_shifted(stack: Stack, batches: list[Any], shift: int) -> None:
    """Write the messages of `batches` straight to the ingest topic, each on the partition
    `shift` after its owner (0: where the ingress would put it)."""
    from aiokafka import AIOKafkaProducer

    topic = service_topics(stack.settings).ingest
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, enable_idempotence=True,
                                acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for batch in batches:
            for key, value, headers in batch.messages:
                await producer.send(topic.name, value, key=key, headers=headers,
                                    partition=(partition_for(key, topic.partitions) + shift) % topic.partitions)
        await producer.flush()
    finally:
        await producer.stop()


async def measure_hand_on(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The worker's CPU per record for direct batches on their owner partitions, and for the same
    kind of batches with every message on the next partition (each operation handed on, then
    applied on its owner): alternately, twice each."""
    runs: dict[str, list[dict[str, float]]] = {"own_partition": [], "handed_on": []}
    for attempt in range(2):
        for name, shift in (("own_partition", 0), ("handed_on", 1)):
            batches = ingest_batches(stack, args.direct_batches, f"handon{attempt}{shift}-")
            worker_cpu, started = cpu_seconds(stack.worker.proc.pid), time.monotonic()
            await produce_shifted(stack, batches, shift)
            finished = await wait_all_terminal(stack, [b.batch_id for b in batches])
            records = len(batches) * 1000
            worker_us = (cpu_seconds(stack.worker.proc.pid) - worker_cpu) / records * 1e6
            runs[name].append({"records_per_s": records / (finished - started), "worker_us_per_record": worker_us})
    results["hand_on"] = {name: {"records_per_s": statistics.median(r["records_per_s"] for r in found),
                                 "worker_us_per_record": statistics.median(r["worker_us_per_record"] for r in found),
                                 "runs": found} for name, found in runs.items()}
    own, moved = results["hand_on"]["own_partition"], results["hand_on"]["handed_on"]
    print(f"direct batches on their own partitions: {own['records_per_s']:,.0f} rec/s, worker "
          f"{own['worker_us_per_record']:.1f} µs/record; every message on another partition (handed on): "
          f"{moved['records_per_s']:,.0f} rec/s, worker {moved['worker_us_per_record']:.1f} µs/record", flush=True)


async def single_batch_latencies(stack: Stack, runs: int, tag: str) -> list[float]:
    out = []
    for run in range(runs):
        body = batch_body(f"{tag}{run}")
        started = time.monotonic()
        _, ids, _ = await post_batches(stack, [body], 1)
        finished = await wait_all_terminal(stack, ids)
        out.append(finished - started)
    return out


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
    bodies = [batch_body(f"e2e-{b}") for b in range(args.e2e_batches)]
    started, cpu = time.monotonic(), stack.cpu_share()
    _, ids, _ = await post_batches(stack, bodies, 4)
    finished = await wait_all_terminal(stack, ids)
    results["end_to_end"] = {"batches": len(bodies), "records_per_s": len(bodies) * 1000 / (finished - started),
                             "seconds": finished - started, "cores": cpu.cores()}
    raw_events = args.ingest_batches * len(args.concurrency) * 1000
    bare = await bare_merge_loop(bootstrap, scratch_topic, raw_events)
    results["bare_merge_loop"] = {"records_per_s": raw_events / bare}
    output_topic = f"{stack.settings.topic_prefix}.bench-states"
    await create_topics(bootstrap, [TopicSpec(output_topic, stack.settings.topic_partitions, 1)])
    cpu = stack.cpu_share()
    bare = await bare_exactly_once_loop(bootstrap, scratch_topic, output_topic, raw_events, stack.workdir / "bare-eos")
    cores = cpu.cores()
    cores["loop"] = cores.pop("client")  # the loop runs in this process
    results["bare_exactly_once_loop"] = {"records_per_s": raw_events / bare, "cores": cores}
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


async def measure_fairness(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """9. Two tenants: one uploads continuously at its full quota (a share of the measured
    end-to-end rate), the other's single 1000-record batches are timed, against the same idle
    just before; once per share."""
    async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
        response = await http.post("/partner/schema-definitions", json=SCHEMA,
                                   headers={"Authorization": f"Bearer {make_token(stack.settings, 'bulk')}"})
        response.raise_for_status()
    results["fairness"] = []
    for share in args.bulk_share:
        for burst in (None, 1000):  # a minute's worth at once (the default), and paced: one batch
            results["fairness"].append(await fairness_at(
                stack, args, int(results["end_to_end"]["records_per_s"] * 60 * share), share, burst))


async def fairness_at(stack: Stack, args: argparse.Namespace, per_minute: int, share: float,
                      burst: int | None) -> dict[str, Any]:
    """One tenant at its quota (`burst`: its REACH_QUOTA_BURST_RECORDS, None: a minute's worth),
    another one's single batches timed beside it from 5 s after it began, and idle just before."""
    stack.restart_ingress(replace(stack.settings, quota_overrides={
        "bulk": Quota(records_per_minute=per_minute, burst_records=burst)}))
    # A tenant of its own per run: what one run spent of its allowance must not refuse the next.
    bulk = {"Authorization": f"Bearer {make_token(stack.settings, 'bulk', f'bulk-{share}-{burst}')}",
            "content-type": "application/json"}
    idle = await single_batch_latencies(stack, args.fairness_runs, f"fair-idle{share}-{burst}")
    stop, taken, refused, started = asyncio.Event(), [0], [0], time.monotonic()

    async def bulk_client(n: int) -> None:
        """As `reach upload` does: send, and wait as long as a 429's Retry-After says."""
        async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
            b = 0
            while not stop.is_set():
                response = await http.post("/api/resources/customer/batch",
                                           content=batch_body(f"bulk{share}-{burst}-{n}-{b}"), headers=bulk)
                b += 1
                if response.status_code == 202:
                    taken[0] += 1000
                elif response.status_code == 429:
                    refused[0] += 1
                    await asyncio.sleep(float(response.headers["retry-after"]))
                else:
                    raise RuntimeError(f"bulk upload answered {response.status_code}: {response.text[:300]}")

    clients = [asyncio.create_task(bulk_client(n)) for n in range(2)]
    # Paced, the tenant is at its quota's pace by then; with a minute's worth at once, it is
    # still sending that burst, and the timed batches queue behind what it has sent.
    await asyncio.sleep(5)
    loaded = await single_batch_latencies(stack, args.fairness_runs, f"fair-loaded{share}-{burst}")
    stop.set()
    await asyncio.gather(*clients)
    bulk_rate = taken[0] / (time.monotonic() - started)
    print(f"fairness: a tenant at its quota of {per_minute:,} records/min ({share:.0%} of end to end; burst "
          f"{'a minute' if burst is None else burst}) sends "
          f"{bulk_rate:,.0f} rec/s ({refused[0]} 429s); another tenant's batch p50/p99 idle "
          f"{percentile(idle, 50) * 1000:.0f}/{percentile(idle, 99) * 1000:.0f} ms, alongside "
          f"{percentile(loaded, 50) * 1000:.0f}/{percentile(loaded, 99) * 1000:.0f} ms "
          f"(p99 x{percentile(loaded, 99) / percentile(idle, 99):.2f})", flush=True)
    await wait_drained(stack)
    return {"share": share, "bulk_quota_per_minute": per_minute, "burst_records": burst or per_minute,
            "bulk_records_per_s": bulk_rate,
            "bulk_429s": refused[0],
            "idle": {"p50": percentile(idle, 50), "p99": percentile(idle, 99), "runs": idle},
            "alongside_bulk": {"p50": percentile(loaded, 50), "p99": percentile(loaded, 99), "runs": loaded}}


async def wait_drained(stack: Stack, timeout_s: float = 600) -> None:
    """Until no accepted record waits for the worker (the ingress's `/ready` says)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        while (await http.get("/ready")).json()["data"]["backlogRecords"] > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the backlog did not drain in {timeout_s} s")
            await asyncio.sleep(0.1)


async def measure_two_workers(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """8. Scale-out: a second worker joins the group; the end-to-end run again."""
    settings = replace(stack.settings, worker_web_port=free_port())
    second = ServiceProcess(["-m", "processors.worker"], settings, stack.workdir / "worker-2.log").start()
    joined = time.monotonic()
    try:
        # Its partitions are its own once it logs where each of its ingest partitions resumes:
        # after it restored its share as standbys (it has none on disk) and asked for it, in the
        # rebalance where it takes it warm. Its first rebalance gives it standbys only.
        try:
            await asyncio.to_thread(wait_until, lambda: any("resuming at" in line and ".ingest[" in line
                                                        for line in second.log().splitlines()), 900,
                                    what="the second worker to take partitions")
        except AssertionError:
            print(f"--- worker 2:\n{second.log()[-4000:]}\n--- worker 1:\n{stack.worker.log()[-4000:]}", flush=True)
            raise
        takeover_s = time.monotonic() - joined
        print(f"a second worker took its partitions in {takeover_s:.0f} s (restore as standbys, then takeover)",
              flush=True)
        await wait_all_terminal(stack, (await post_batches(stack, [batch_body("two-warmup")], 1))[1])
        bodies = [batch_body(f"e2e2-{b}") for b in range(args.e2e_batches)]
        started, cpu = time.monotonic(), stack.cpu_share(**{"worker 2": [second.proc.pid]})
        _, ids, _ = await post_batches(stack, bodies, 4)
        finished = await wait_all_terminal(stack, ids)
        rate = len(bodies) * 1000 / (finished - started)
        results["end_to_end_2_workers"] = {"records_per_s": rate, "per_worker": rate / 2, "cores": cpu.cores(),
                                           "takeover_s": takeover_s}
        print(f"end to end, 2 workers: {rate:,.0f} rec/s ({rate / 2:,.0f} per worker)", flush=True)
    finally:
        second.stop()


async def measure_writes(stack: Stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Deletes by id, deleteAll, and single-resource writes."""
    # Customers of the end-to-end run are `e2e-<b>-<i>`, 1000 per batch b.
    def ids(b: int) -> list[str]:
        return [record(i, f"e2e-{b}")["id"] for i in range(1000)]

    # 5. Deletes by id (the customers of the end-to-end run).
    deletes = [orjson.dumps({"externalIds": ids(b)}) for b in range(args.delete_records // 1000)]
    results["delete_by_id"] = {"records": len(deletes) * 1000,
                               "records_per_s": await end_to_end(stack, deletes, "/api/resources/customer/batch",
                                                                 "DELETE")}
    print(f"delete by id: {results['delete_by_id']['records_per_s']:,.0f} rec/s", flush=True)

    # deleteAll of a schema of `delete_all` resources: the request names them all at acceptance.
    leads = [batch_body(f"lead-{b}") for b in range(args.delete_all // 1000)]
    await end_to_end(stack, leads, "/api/resources/lead/batch")
    started = time.monotonic()
    _, ids_all, durations = await post_batches(stack, [orjson.dumps({"deleteAll": True})], 1,
                                               "/api/resources/lead/batch", "DELETE")
    finished = await wait_all_terminal(stack, ids_all)
    results["delete_all"] = {"records": args.delete_all, "accept_s": durations[0],
                             "records_per_s": args.delete_all / (finished - started)}
    print(f"deleteAll of {args.delete_all:,}: accepted in {durations[0]:.2f} s, "
          f"{results['delete_all']['records_per_s']:,.0f} rec/s end to end", flush=True)

    # 7. Single-resource writes, one after another: POST answered with the resource once applied.
    headers = {"Authorization": f"Bearer {stack.tenant}", "content-type": "application/json"}
    latencies = []
    async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
        for n in range(args.single_writes):
            body = orjson.dumps({"data": record(n, "single")})
            started = time.perf_counter()
            response = await http.post("/api/resources/customer", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"single write answered {response.status_code}: {response.text[:300]}")
    results["single_write_s"] = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                                 "runs": len(latencies)}
    print(f"single-resource write p50 {percentile(latencies, 50) * 1000:.0f} ms "
          f"p99 {percentile(latencies, 99) * 1000:.0f} ms", flush=True)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    levels = [r["concurrency"] for r in results["ingest"]]
    width = 0.38
    xs = range(len(levels))
    left.bar([x - width / 2 for x in xs], [r["records_per_s"] for r in results["ingest"]], width, label="HTTP ingress")
    left.bar([x + width / 2 for x in xs], [r["records_per_s"] for r in results["send_batch"]], width,
             label="aiokafka send_batch")
    left.axhline(results["producer_performance"]["records_per_s"], color="tab:red", linestyle="--",
                 label="Kafka ProducerPerformance")
    left.set_xticks(list(xs), [f"c={c}" for c in levels])
    left.set_title("Ingest (records/s accepted)")
    left.legend()
    middle.bar(["service (1 worker)", "Kafka Streams peer", "bare exactly-once loop", "bare merge loop"],
               [results["end_to_end"]["records_per_s"], results["kafka_streams_peer"]["records_per_s"],
                results["bare_exactly_once_loop"]["records_per_s"], results["bare_merge_loop"]["records_per_s"]],
               color=["tab:blue", "tab:purple", "tab:green", "tab:orange"])
    middle.tick_params(axis="x", rotation=20)
    middle.set_title("End to end (records/s)")
    lat = results["latency_s"]
    right.bar(["idle p50", "idle p99", "half load p50", "half load p99", "dep. release p50"],
              [lat["idle"]["p50"] * 1000, lat["idle"]["p99"] * 1000, lat["half_load"]["p50"] * 1000,
               lat["half_load"]["p99"] * 1000, results["references"]["release_s"]["idle"]["p50"] * 1000])
    right.set_title("Latency (ms)")
    right.tick_params(axis="x", rotation=20)
    fig.suptitle(f"reach ingest benchmark — {results['machine']['summary']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict[str, Any]) -> str:
    rows = [("measure", "service", "baseline", "ratio")]
    java = results["producer_performance"]["records_per_s"]
    for ours, raw in zip(results["ingest"], results["send_batch"]):
        rows.append((f"ingest c={ours['concurrency']} (rec/s)", f"{ours['records_per_s']:,.0f}",
                     f"{raw['records_per_s']:,.0f} (aiokafka send_batch)",
                     f"{ours['records_per_s'] / raw['records_per_s']:.2f}"))
    best = max(r["records_per_s"] for r in results["ingest"])
    rows.append(("ingest, best level (rec/s)", f"{best:,.0f}", f"{java:,.0f} (Kafka ProducerPerformance)",
                 f"{best / java:.2f}"))
    alone = results["ingest_alone"]
    rows.append((f"ingest c={alone['concurrency']}, worker paused (rec/s)", f"{alone['records_per_s']:,.0f}",
                 f"{java:,.0f} (Kafka ProducerPerformance)", f"{alone['records_per_s'] / java:.2f}"))
    e2e, bare = results["end_to_end"]["records_per_s"], results["bare_merge_loop"]["records_per_s"]
    eos = results["bare_exactly_once_loop"]["records_per_s"]
    peer = results["kafka_streams_peer"]["records_per_s"]
    rows.append(("end to end, 1 worker (rec/s)", f"{e2e:,.0f}", f"{peer:,.0f} (Kafka Streams peer)",
                 f"{e2e / peer:.2f}"))
    rows.append(("", "", f"{eos:,.0f} (bare exactly-once loop)", f"{e2e / eos:.2f}"))
    rows.append(("", "", f"{bare:,.0f} (bare merge loop)", f"{e2e / bare:.2f}"))
    direct = results["end_to_end_confluent"]["records_per_s"]
    rows.append(("end to end, stock Confluent producer to the topic, its defaults (rec/s)", f"{direct:,.0f}",
                 f"{e2e:,.0f} (over HTTP)", f"{direct / e2e:.2f}"))
    murmur2 = results["end_to_end_confluent_murmur2"]["records_per_s"]
    rows.append(("… with partitioner murmur2_random (rec/s)", f"{murmur2:,.0f}", f"{e2e:,.0f} (over HTTP)",
                 f"{murmur2 / e2e:.2f}"))
    own, moved = results["hand_on"]["own_partition"], results["hand_on"]["handed_on"]
    rows.append(("direct, every message on another partition: worker µs/record", f"{moved['worker_us_per_record']:.1f}",
                 f"{own['worker_us_per_record']:.1f} (on their own partitions)",
                 f"{moved['worker_us_per_record'] / own['worker_us_per_record']:.2f}"))
    rows.append(("… end to end (rec/s)", f"{moved['records_per_s']:,.0f}",
                 f"{own['records_per_s']:,.0f} (on their own partitions)",
                 f"{moved['records_per_s'] / own['records_per_s']:.2f}"))
    lat = results["latency_s"]
    for name, key in (("1000-record batch idle p50 / p99", "idle"), ("… under half load p50 / p99", "half_load")):
        rows.append((name, f"{lat[key]['p50'] * 1000:.0f} / {lat[key]['p99'] * 1000:.0f} ms", "", ""))
    rows.extend(reference_rows(results["references"]))
    deletes = results["delete_by_id"]["records_per_s"]
    rows.append((f"delete {results['delete_by_id']['records']:,} by id (rec/s)", f"{deletes:,.0f}",
                 f"{e2e:,.0f} (upserts)", f"{deletes / e2e:.2f}"))
    delete_all = results["delete_all"]
    rows.append((f"deleteAll of {delete_all['records']:,} (rec/s)",
                 f"{delete_all['records_per_s']:,.0f} (accepted in {delete_all['accept_s']:.2f} s)", "", ""))
    single = results["single_write_s"]
    rows.append(("single-resource write p50 / p99", f"{single['p50'] * 1000:.0f} / {single['p99'] * 1000:.0f} ms",
                 "", ""))
    for fair in results["fairness"]:
        burst = "a minute's worth" if fair["burst_records"] == fair["bulk_quota_per_minute"] else \
            f"{fair['burst_records']:,}"
        rows.append((f"other tenant's batch p50 / p99 beside one at its quota, {fair['share']:.0%} "
                     f"({fair['bulk_records_per_s']:,.0f} rec/s), burst {burst}",
                     f"{fair['alongside_bulk']['p50'] * 1000:.0f} / {fair['alongside_bulk']['p99'] * 1000:.0f} ms",
                     f"{fair['idle']['p50'] * 1000:.0f} / {fair['idle']['p99'] * 1000:.0f} ms (idle)",
                     f"{fair['alongside_bulk']['p99'] / fair['idle']['p99']:.2f}"))
    two = results["end_to_end_2_workers"]
    rows.append(("end to end, 2 workers (rec/s; per worker)", f"{two['records_per_s']:,.0f}; {two['per_worker']:,.0f}",
                 f"{e2e:,.0f} (1 worker)", f"{two['records_per_s'] / e2e:.2f}"))
    rows.append(("a second worker joining: rebalance and restore", f"{two['takeover_s']:.0f} s", "", ""))
    for name, run in (("ingest alone", alone), ("end to end with 1 worker", results["end_to_end"]),
                      ("end to end, Confluent producer", results["end_to_end_confluent"]),
                      ("end to end with 2 workers", two),
                      ("bare exactly-once loop", results["bare_exactly_once_loop"])):
        cores = ", ".join(f"{part} {used:.2f}" for part, used in sorted(run["cores"].items(), key=lambda kv: -kv[1]))
        rows.append((f"cores used, {name}", cores, f"of {results['machine']['cpu_count']}", ""))
    peak = results["peak_mb"]
    rows.append((f"peak memory ingress ({peak['ingress_processes']} processes) / worker",
                 f"{peak['ingress']:.0f} / {peak['worker']:.0f} MB", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--ingest-batches", type=int, default=50, help="batches per concurrency level")
    parser.add_argument("--e2e-batches", type=int, default=200)
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
