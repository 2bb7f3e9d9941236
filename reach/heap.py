"""The garbage collector of the long-running processes: the ingress, the readers and the workers.

CPython collects its youngest generation every 700 net allocations of containers, and every so
often traverses every object it tracks. Under load a worker made 13 young collections a second,
and its full collections traversed the ~87,000 objects that starting it had made (modules,
Faust's and aiokafka's services): 55–75 ms each, the event loop stopped meanwhile, every few
seconds. Measured by `gc.callbacks` over a run: 3.7 % of the worker's CPU with plain records,
7.3 % with three references each, 4 % of the reader's (docs/benchmarks.md). Our per-record
objects are freed by reference counting as they go out of use; the collector is only for cycles.
"""

from __future__ import annotations

import gc

# Net allocations of containers between two collections of the youngest generation (CPython: 700).
YOUNG_COLLECTION_EVERY = 10_000


def settle() -> None:
    """Once a process has started: collect once, then keep what is left (what starting made,
    alive for the process's life) out of every later collection (`gc.freeze`), and collect the
    youngest generation every `YOUNG_COLLECTION_EVERY` net allocations.

    A frozen object is still freed when its last reference goes; only a cycle among frozen
    objects would stay, so this is done once per process, not at every rebalance."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
