"""The worker's Prometheus metrics, served at `GET /metrics` on its web port.

Counted where the work happens, per worker process (Prometheus adds up the workers): records
applied by outcome and code, how long a record took from its acceptance to its outcome,
dead letters, commits and their duration, rebalances, and how far the worker is behind on
each ingest partition it owns. A record processed again after a crash (its transaction
aborted) is counted again, as Kafka Streams' and Faust's own counters do; the batch status is
what counts each record exactly once.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# From a few ms (an idle worker) to minutes (a backlog, or a record that waited for references).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _AppliedRecords(Collector):
    """`reach_records_applied` (by outcome and code) and `reach_record_latency_seconds`, counted
    in plain ints and exported at each scrape: a Counter's `inc` and a Histogram's `observe`
    cost about 4 µs a record together (their locks and label lookups), 5% of the worker's time."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last: +Inf
        self.sum = 0.0

    def add(self, outcome: str, code: str, latency_s: float | None) -> None:
        key = (outcome, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        if latency_s is not None:
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self.sum += latency_s

    def collect(self) -> Iterator[Metric]:
        applied = CounterMetricFamily("reach_records_applied", "Records of batches given a final outcome by this "
                                      "worker", labels=["outcome", "code"])
        for labels, count in self.counts.items():
            applied.add_metric(list(labels), count)
        yield applied
        latency = HistogramMetricFamily("reach_record_latency_seconds", "From a record's acceptance (the ingress's "
                                        "202, or a direct producer's acceptedAt) to its final outcome")
        bounds = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]
        latency.add_metric([], buckets=list(zip(bounds, itertools.accumulate(self.buckets))), sum_value=self.sum)
        yield latency


_APPLIED = _AppliedRecords()
REGISTRY.register(_APPLIED)
HANDED_ON = Counter("reach_handed_on_records", "Ingest operations read on another partition than their resource's "
                    "and written to its own (`processors.hand_on`)")
DEAD_LETTERS = Counter("reach_dead_letters", "Ingest messages sent to the dead-letter topic")
COMMITS = Counter("reach_commits", "Kafka transactions committed (one per owned input partition with progress)")
COMMIT_DURATION = Histogram("reach_commit_duration_seconds",
                            "How long one commit of the worker's transactions took",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
REBALANCES = Counter("reach_rebalances", "Partition assignments this worker received")
ASSIGNED_PARTITIONS = Gauge("reach_assigned_partitions", "Ingest partitions this worker owns")
CONSUMER_LAG = Gauge("reach_ingest_consumer_lag",
                     "Offsets of an owned ingest partition not processed yet: its high watermark minus the next "
                     "offset to process (messages, each up to a batch's records of the partition, and "
                     "transaction markers)", ["partition"])


def record_applied(outcome: str, code: str | None, accepted_at_ms: int | None, now_ms: int) -> None:
    """Count one record's final outcome (`code`: its error code; none for a success) at `now_ms`."""
    _APPLIED.add(outcome, code or "", max(now_ms - accepted_at_ms, 0) / 1000 if accepted_at_ms else None)


def set_lags(lags: dict[int, int], owned: Iterable[int]) -> None:
    """The lag of each owned partition; partitions no longer owned are dropped."""
    owned = set(owned)
    for labels in list(CONSUMER_LAG._metrics):  # noqa: SLF001 — the only way to list label values
        if int(labels[0]) not in owned:
            CONSUMER_LAG.remove(*labels)
    for partition, lag in lags.items():
        CONSUMER_LAG.labels(str(partition)).set(lag)
    ASSIGNED_PARTITIONS.set(len(owned))
