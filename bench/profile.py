"""Where the time goes: `make profile` (or `.venv/bin/python -m bench.profile`).

Starts the benchmark's stack (its own broker, one ingress, one worker), uploads `--batches`
batches of 1000 customers (`--load references`: of 1000 orders naming customers uploaded
before; `--load transfers`: of 1000 transfers naming three of them each; `--load cascade`:
deletes with cascade of 1000 customers, each with an order and its shipment) at concurrency 4
while py-spy samples the worker, the ingress and the reader until every batch is terminal,
then prints the records/s of that run and the functions that took the most of each process's
samples (inclusive and own time). The collapsed stacks go to
`bench/results/profile-{worker,ingress}.folded` (for speedscope.app or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.references import define_transfer, transfers_body
from bench.stack import RESULTS, Stack, batch_body, end_to_end, post_batches

PY_SPY = Path(sys.executable).with_name("py-spy")


def top(raw: Path, n: int) -> str:
    """The `n` functions with the most samples, inclusive and own, from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                  for frame in stack.split(";")]
        for name in set(frames):
            inclusive[name] += samples
        own[frames[-1]] += samples
    lines = [f"{total} samples"]
    for title, counts in (("inclusive", inclusive), ("own", own)):
        lines.append(f"-- {title}")
        lines.extend(f"{v / total * 100:5.1f}%  {k}" for k, v in counts.most_common(n))
    return "\n".join(lines)


def bodies_of(stack: Stack, kind: str, batches: int) -> tuple[list[bytes], str, str]:
    """The batches to profile (their path and method); what they reference uploaded first."""
    tag = f"prof-{time.time_ns()}"
    customers = [batch_body(f"{tag}-{b}") for b in range(batches)]
    if kind == "plain":
        return customers, "/api/resources/customer/batch", "POST"
    ids = [[c["id"] for c in orjson.loads(body)["resources"]] for body in customers]
    orders = [orjson.dumps({"resources": [{"id": f"o-{c}", "total": 1.0, "customer": c} for c in batch]})
              for batch in ids]
    asyncio.run(end_to_end(stack, customers))
    if kind == "references":
        return orders, "/api/resources/order/batch", "POST"
    if kind == "transfers":
        define_transfer(stack)
        return [transfers_body(batch) for batch in ids], "/api/resources/transfer/batch", "POST"
    asyncio.run(end_to_end(stack, orders, "/api/resources/order/batch"))
    shipments = [orjson.dumps({"resources": [{"id": f"s-{c}", "carrier": "DHL", "order": f"o-{c}"} for c in batch]})
                 for batch in ids]
    asyncio.run(end_to_end(stack, shipments, "/api/resources/shipment/batch"))
    return ([orjson.dumps({"externalIds": batch, "cascade": True}) for batch in ids], "/api/resources/customer/batch",
            "DELETE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--load", choices=["plain", "references", "transfers", "cascade"], default="plain",
                        help="customers; orders naming customers (each pinned on its customer's partition); "
                             "transfers naming three customers; or cascade deletes of customers, each with an "
                             "order and its shipment")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    # One ingress process: its samples are then one process's, as the worker's are.
    with tempfile.TemporaryDirectory(prefix="reach-profile-") as tmp, Stack(Path(tmp), ingress_processes=1) as stack:
        asyncio.run(post_batches(stack, [batch_body("warmup")], 1))
        bodies, path, method = bodies_of(stack, args.load, args.batches)
        spies = {}
        for name, process in (("worker", stack.worker), ("ingress", stack.ingress), ("reader", stack.reader)):
            raw = Path(tmp) / f"{name}.txt"
            spies[name] = (raw, subprocess.Popen(
                [str(PY_SPY), "record", "-p", str(process.proc.pid), "-r", "100", "-f", "raw", "-o", str(raw),
                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)  # py-spy attaches
        rate = asyncio.run(end_to_end(stack, bodies, path, method))
        for _, (_, spy) in spies.items():
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            spy.wait(timeout=30)
        print(f"end to end: {rate:,.0f} rec/s ({args.batches} batches of 1000 {args.load}, concurrency 4)")
        for name, (raw, _) in spies.items():
            print(f"\n== {name}\n{top(raw, args.top)}")
            (RESULTS / f"profile-{name}.folded").write_text(raw.read_text())


if __name__ == "__main__":
    main()
