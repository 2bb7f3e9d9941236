"""Where the time goes: `make profile` (or `.venv/bin/python -m bench.profile`).

Starts the benchmark's stack (its own broker, one ingress, one worker), uploads `--batches`
batches of 1000 customers at concurrency 4 while py-spy samples the worker and the ingress
until every batch is terminal, then prints the records/s of that run and the functions that
took the most of each process's samples (inclusive and own time). The collapsed stacks go to
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

from bench.run import RESULTS, Stack, batch_body, post_batches, wait_all_terminal

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


async def load(stack: Stack, batches: int) -> float:
    bodies = [batch_body(f"prof-{time.time_ns()}-{b}") for b in range(batches)]
    started = time.monotonic()
    _, ids, _ = await post_batches(stack, bodies, 4)
    return batches * 1000 / (await wait_all_terminal(stack, ids) - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    # One ingress process: its samples are then one process's, as the worker's are.
    with tempfile.TemporaryDirectory(prefix="reach-profile-") as tmp, Stack(Path(tmp), ingress_processes=1) as stack:
        asyncio.run(post_batches(stack, [batch_body("warmup")], 1))
        spies = {}
        for name, process in (("worker", stack.worker), ("ingress", stack.ingress)):
            raw = Path(tmp) / f"{name}.txt"
            spies[name] = (raw, subprocess.Popen(
                [str(PY_SPY), "record", "-p", str(process.proc.pid), "-r", "100", "-f", "raw", "-o", str(raw),
                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)  # py-spy attaches
        rate = asyncio.run(load(stack, args.batches))
        for name, (raw, spy) in spies.items():
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            spy.wait(timeout=30)
        print(f"end to end: {rate:,.0f} rec/s ({args.batches} batches of 1000, concurrency 4)")
        for name, (raw, _) in spies.items():
            print(f"\n== {name}\n{top(raw, args.top)}")
            (RESULTS / f"profile-{name}.folded").write_text(raw.read_text())


if __name__ == "__main__":
    main()
