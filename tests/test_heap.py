"""The collector settings of the long-running processes (`reach.heap`), in a process of their own."""

from __future__ import annotations

import subprocess
import sys

import orjson

PROBE = """
import gc, orjson
import faust, starlette.applications  # what a worker or an ingress has loaded when it settles
from reach import heap

before = len(gc.get_objects())
heap.settle()
after = len(gc.get_objects())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after settling: still the collector's to free
del a, b
collected = gc.collect()
print(orjson.dumps({"before": before, "after": after, "frozen": gc.get_freeze_count(),
                    "threshold": gc.get_threshold(), "collected": collected}).decode())
"""


def test_settling_takes_startup_objects_out_of_collections_and_still_frees_new_cycles() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = orjson.loads(run.stdout)
    assert seen["before"] > 10_000, seen  # Faust's and Starlette's objects
    assert seen["after"] < seen["before"] / 10, seen  # later collections traverse the few left
    assert seen["frozen"] >= seen["before"] / 2, seen
    assert seen["threshold"][0] == 10_000, seen
    assert seen["collected"] >= 2, seen  # the two nodes (and their attribute dicts)
