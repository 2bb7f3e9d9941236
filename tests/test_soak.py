"""Soak: the exactly-once load of `test_exactly_once`, repeated for several tenants while workers
are killed with SIGKILL and restarted again and again. Slow, so behind the `soak` marker:

    make test PYTEST_ARGS="-m soak"            # REACH_SOAK_CYCLES=<n> for more (default 6)
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from reach.config import Settings
from tests.support import SUMMARY, ServiceProcess, bearer, free_port, tenant_token, wait_until
from tests.test_exactly_once import (
    Expected,
    _assert_exactly_one_outcome_each,
    _check_results,
    _define_schema,
    _progress,
    _upload_load,
)

CYCLES = int(os.environ.get("REACH_SOAK_CYCLES", "6"))


@pytest.mark.soak
@pytest.mark.timeout(600 + 300 * CYCLES)
def test_workers_killed_again_and_again_lose_and_repeat_nothing(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    rng = random.Random()
    _define_schema(ingress)
    workers = [ServiceProcess(["-m", "processors.worker"], replace(settings, worker_web_port=free_port()),
                              tmp_path / f"w{n}.log").start() for n in range(2)]
    loads: list[tuple[dict[str, str], Expected]] = []
    kills = 0
    try:
        for cycle in range(CYCLES):
            headers = bearer(tenant_token(tenant=f"soak-{cycle}"))
            expected = _upload_load(ingress, headers)
            loads.append((headers, expected))
            total = sum(e.total for e in expected.values())
            # Kill one worker at a random point of this tenant's load, restart it at once.
            point = int(total * rng.uniform(0.05, 0.8))
            wait_until(lambda: _progress(ingress, headers, list(expected)) >= point, 180, 0.05,
                       what=f"cycle {cycle} to reach {point} records")
            victim = rng.randrange(len(workers))
            workers[victim].stop(signal.SIGKILL)
            kills += 1
            workers[victim] = ServiceProcess(workers[victim].args, workers[victim].settings,
                                             workers[victim].log_path).start()
        for headers, expected in loads:
            _check_results(ingress, headers, expected, timeout_s=300)
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0], [worker.log()[-3000:] for worker in workers]
    everything = {batch: counts for _, expected in loads for batch, counts in expected.items()}
    _assert_exactly_one_outcome_each(settings, everything)
    records = sum(e.total for e in everything.values())
    SUMMARY.append(f"soak: {kills} workers killed with SIGKILL over {CYCLES} loads; "
                   f"{records} records checked, none lost or counted twice")
