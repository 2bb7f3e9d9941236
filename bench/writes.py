"""Deletes and single-resource writes (`make bench`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import orjson

from bench.stack import (
    Stack,
    batch_body,
    end_to_end,
    percentile,
    post_batches,
    record,
    wait_all_terminal,
)


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
