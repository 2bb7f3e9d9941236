"""References at speed: records with 0, 1 and 3 references, a cascade, and dependency release.

`make bench` runs this as one of its steps; alone (`python -m bench.references`) it brings up
its own stack (`bench.stack.Stack`: a broker, one ingress, one worker, real processes) and prints
its rows. Every figure is end to end: from the first POST until every batch is terminal.

- plain records (no reference): customers, the baseline of the rows below;
- one reference: orders naming existing customers (each pinned on its customer's partition);
- three references: transfers naming three existing customers (payer, payee, witness);
  these three runs are repeated `ROUNDS` times, new customers each round, and each row is the
  median of its runs;
- a cascade over two levels: customers deleted with cascade, each with an order naming it and
  a shipment naming that order (three resources deleted per customer named);
- dependency release: a waiting order's batch terminal (polled every 5 ms) after its
  customer's batch is accepted, and the order's creation after the customer's (their
  `createdAt`), idle, while plain records arrive at half the plain rate, and while orders
  naming existing customers arrive at half the one-reference rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.stack import RESULTS, Stack, batch_body, end_to_end, percentile, post_batches, record, wait_all_terminal

TRANSFER = {
    "name": "Transfer", "externalIdField": "id",
    "schema": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "amount": {"type": "number"},
        "payer": {"$ref": "reach:schemas/Customer"}, "payee": {"$ref": "reach:schemas/Customer"},
        "witness": {"$ref": "reach:schemas/Customer"}}},
}
RELEASE_POLL_S = 0.005
ROUNDS = 3  # of the plain, one-reference and three-reference runs


def customer_ids(tag: str, b: int) -> list[str]:
    return [record(i, f"{tag}-{b}")["id"] for i in range(1000)]


def define_transfer(stack: Stack) -> None:
    """Define the Transfer schema on `stack` (already defined is fine)."""
    response = httpx.post(f"{stack.base}/partner/schema-definitions", json=TRANSFER,
                          headers={"Authorization": f"Bearer {stack.partner}"}, timeout=30)
    if response.status_code not in (200, 201, 409):
        response.raise_for_status()


def transfers_body(ids: list[str]) -> bytes:
    """A batch of transfers, one per customer of `ids`, each naming it and the next two."""
    return orjson.dumps({"resources": [
        {"id": f"t-{c}", "amount": 1.5, "payer": c, "payee": ids[(i + 1) % len(ids)],
         "witness": ids[(i + 2) % len(ids)]} for i, c in enumerate(ids)]})


async def wait_pending(http: httpx.AsyncClient, batch_id: str, headers: dict[str, str]) -> None:
    """Until the batch reports its record pending (its reference found missing)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await http.get(f"/api/batches/{batch_id}", headers=headers)
        if response.status_code == 200 and response.json()["data"]["progress"]["pendingRecords"] >= 1:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"batch {batch_id} never reported a pending record")


def created_at(resource: dict[str, Any]) -> float:
    """A resource's `createdAt` (set by the worker that applied it), in seconds since the epoch."""
    return datetime.fromisoformat(resource["createdAt"].replace("Z", "+00:00")).timestamp()


async def release_latencies(stack: Stack, runs: int, tag: str) -> tuple[list[float], list[float]]:
    """Per run, seconds from a customer's acceptance (202) until the batch of the order that
    waited for it is terminal, and from the customer's creation until the order's (the
    worker's own clock, in `createdAt`)."""
    headers = {"Authorization": f"Bearer {stack.tenant}", "content-type": "application/json"}
    out, after_creation = [], []
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        for run in range(runs):
            customer = f"dep-{tag}-{run}-{uuid.uuid4().hex[:6]}"
            order = {"resources": [{"id": f"o-{customer}", "total": 10.5, "customer": customer}]}
            response = await http.post("/api/resources/order/batch?dependencyWaitTimeout=120",
                                        content=orjson.dumps(order), headers=headers)
            order_batch = response.json()["data"]["batchId"]
            await wait_pending(http, order_batch, headers)
            body = {"resources": [{**record(0, customer), "id": customer}]}
            response = await http.post("/api/resources/customer/batch", content=orjson.dumps(body), headers=headers)
            accepted = time.monotonic()
            if response.status_code != 202:
                raise RuntimeError(f"customer upload answered {response.status_code}: {response.text[:300]}")
            # Polled every 5 ms: the default 20 ms would add 10 ms on average to a figure of tens.
            out.append(await wait_all_terminal(stack, [order_batch], poll_s=RELEASE_POLL_S) - accepted)
            customer_resource = (await http.get(f"/api/resources/customer/{customer}", headers=headers)).json()
            order_resource = (await http.get(f"/api/resources/order/o-{customer}", headers=headers)).json()
            after_creation.append(created_at(order_resource["data"]["result"])
                                  - created_at(customer_resource["data"]["result"]))
    return out, after_creation


async def releases_under_load(stack: Stack, runs: int, records_per_s: float,
                              body_of: Callable[[int], bytes] = lambda n: batch_body(f"rel-load-{n}"),
                              path: str = "/api/resources/customer/batch") -> tuple[list[float], list[float]]:
    """Release latencies while batches `body_of(0)`, `body_of(1)`, ... arrive at `path` at
    `records_per_s` (default: plain customers)."""
    stop = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            await post_batches(stack, [body_of(n)], 1, path)
            n += 1
            await asyncio.sleep(max(0.0, 1000 / records_per_s - (time.monotonic() - started)))

    task = asyncio.create_task(load())
    try:
        return await release_latencies(stack, runs, "loaded")
    finally:
        stop.set()
        await task


async def measure_references(stack: Stack, batches: int, cascade_roots: int, release_runs: int) -> dict[str, Any]:
    """The rows of this module, measured on `stack` (whose schemas include Customer, Order and Shipment)."""
    define_transfer(stack)
    results: dict[str, Any] = {"batches": batches, "rounds": ROUNDS}
    # Rounds of plain, one-reference and three-reference runs, each row the median of its runs:
    # a single 20-batch plain run swung by ±20 % between `make bench` runs, and the reference
    # rows are ratios to it.
    runs: dict[str, list[float]] = {"plain_per_s": [], "one_reference_per_s": [], "three_references_per_s": []}
    for r in range(ROUNDS):
        tag = f"refc{r}"
        customers = [batch_body(f"{tag}-{b}") for b in range(batches)]
        runs["plain_per_s"].append(await end_to_end(stack, customers, "/api/resources/customer/batch"))
        orders = [orjson.dumps({"resources": [{"id": f"o-{c}", "total": 10.5, "customer": c}
                                              for c in customer_ids(tag, b)]}) for b in range(batches)]
        runs["one_reference_per_s"].append(await end_to_end(stack, orders, "/api/resources/order/batch"))
        transfers = [transfers_body(customer_ids(tag, b)) for b in range(batches)]
        runs["three_references_per_s"].append(await end_to_end(stack, transfers, "/api/resources/transfer/batch"))
        print(f"references, round {r + 1} of {ROUNDS}: plain {runs['plain_per_s'][-1]:,.0f}, one reference "
              f"{runs['one_reference_per_s'][-1]:,.0f}, three references {runs['three_references_per_s'][-1]:,.0f} "
              "rec/s", flush=True)
    for key, rates in runs.items():
        results[key] = statistics.median(rates)
        results[key.replace("_per_s", "_runs")] = rates
    print(f"references: plain records {results['plain_per_s']:,.0f} rec/s", flush=True)
    print(f"references: one reference {results['one_reference_per_s']:,.0f} rec/s", flush=True)
    print(f"references: three references {results['three_references_per_s']:,.0f} rec/s", flush=True)

    roots = cascade_roots // 1000
    await end_to_end(stack, [batch_body(f"casc-{b}") for b in range(roots)], "/api/resources/customer/batch")
    await end_to_end(stack, [orjson.dumps({"resources": [{"id": f"o-{c}", "total": 1.0, "customer": c}
                                                         for c in customer_ids("casc", b)]}) for b in range(roots)],
                     "/api/resources/order/batch")
    await end_to_end(stack, [orjson.dumps({"resources": [{"id": f"s-{c}", "carrier": "DHL", "order": f"o-{c}"}
                                                         for c in customer_ids("casc", b)]}) for b in range(roots)],
                     "/api/resources/shipment/batch")
    named_per_s = await end_to_end(stack, [orjson.dumps({"externalIds": customer_ids("casc", b), "cascade": True})
                                           for b in range(roots)], "/api/resources/customer/batch", "DELETE")
    results["cascade"] = {"named": roots * 1000, "named_per_s": named_per_s, "deleted_per_s": named_per_s * 3}
    print(f"references: cascade over 2 levels {named_per_s * 3:,.0f} resources deleted/s ({named_per_s:,.0f} named/s)",
          flush=True)

    idle, idle_created = await release_latencies(stack, release_runs, "idle")
    loaded, loaded_created = await releases_under_load(stack, release_runs, results["plain_per_s"] / 2)

    named = [customer_ids("refc0", b) for b in range(batches)]  # once: the load's client shares the cores

    def orders_naming_customers(n: int) -> bytes:  # of the first round's customers, new orders each time
        return orjson.dumps({"resources": [{"id": f"o-load{n}-{c}", "total": 1.0, "customer": c}
                                           for c in named[n % batches]]})

    # A load of references keeps the worker's stream busy with many small events (pins, answers).
    referring, referring_created = await releases_under_load(
        stack, release_runs, results["one_reference_per_s"] / 2, orders_naming_customers, "/api/resources/order/batch")
    for key, measured in (("release_s", (idle, loaded, referring)),
                          ("release_after_creation_s", (idle_created, loaded_created, referring_created))):
        results[key] = {name: {"p50": statistics.median(runs), "p99": percentile(runs, 99), "runs": runs}
                        for name, runs in zip(("idle", "half_load", "references_half_load"), measured)}
    for name, by_load in (("release", results["release_s"]),
                          ("created after its reference", results["release_after_creation_s"])):
        print(f"references: {name} " + "; ".join(
            f"{label} p50 {by_load[load]['p50'] * 1000:.0f} ms p99 {by_load[load]['p99'] * 1000:.0f} ms"
            for label, load in (("idle", "idle"), ("beside half the plain rate", "half_load"),
                                ("beside half the one-reference rate", "references_half_load"))), flush=True)
    return results


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Table rows: (measure, service, baseline, ratio)."""
    plain = results["plain_per_s"]
    out = [("end to end, records without a reference (rec/s)", f"{plain:,.0f}", "", "")]
    for name, key in (("one reference", "one_reference_per_s"), ("three references", "three_references_per_s")):
        out.append((f"end to end, records with {name} (rec/s)", f"{results[key]:,.0f}",
                    f"{plain:,.0f} (without)", f"{results[key] / plain:.2f}"))
    cascade = results["cascade"]
    out.append((f"cascade over 2 levels, {cascade['named']:,} named (deleted/s; named/s)",
                f"{cascade['deleted_per_s']:,.0f}; {cascade['named_per_s']:,.0f}", "", ""))
    for name, measured in (("dependency release (customer accepted → order's batch terminal)", results["release_s"]),
                           ("… order created after its customer (worker clock)", results["release_after_creation_s"])):
        out.append((f"{name} p50 / p99, idle",
                    f"{measured['idle']['p50'] * 1000:.0f} / {measured['idle']['p99'] * 1000:.0f} ms", "", ""))
        for label, load in (("… beside plain uploads at half their rate", "half_load"),
                            ("… beside orders naming customers at half their rate", "references_half_load")):
            out.append((label, f"{measured[load]['p50'] * 1000:.0f} / {measured[load]['p99'] * 1000:.0f} ms", "", ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="1000-record batches per kind of record")
    parser.add_argument("--cascade-roots", type=int, default=10_000, help="customers deleted with cascade (×1000)")
    parser.add_argument("--release-runs", type=int, default=20)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reach-bench-") as tmp, Stack(Path(tmp)) as stack:
        results = asyncio.run(measure_references(stack, args.batches, args.cascade_roots, args.release_runs))
    (RESULTS / "references.json").write_text(json.dumps(results, indent=2))
    table = rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print("\n".join(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in table))


if __name__ == "__main__":
    main()
