"""What a `make bench` run prints and draws: its table (also `docs/benchmarks.md`'s,
`bench.tables`) and its chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.references import rows as reference_rows


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
