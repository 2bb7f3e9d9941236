"""A worker never takes a partition over cold (`reach.seam._assignment_taking_over_warm`).

Faust's own assignor gives a joining worker its share of active partitions at once; the worker
then restored them while they stopped — 541 s for half of 2,000,000 resources. A partition now
stays with the worker that holds it until its new owner has restored it as a standby (in bulk,
`processors.restore`); then the newcomer asks for another rebalance and takes it warm. The rule
is checked on the real assignor class, and end to end with two real workers on the real
broker; `bench/failover.py` measures the pause.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from starlette.testclient import TestClient

from reach import seam
from reach.config import Settings
from tests.support import (
    ServiceProcess,
    bearer,
    committed_outcomes,
    explained_by,
    free_port,
    partner_token,
    ready_generation,
    tenant_token,
    wait_terminal,
    wait_until,
)

seam.install_faust()  # the assignment rule, as a worker has it


Assignment = dict[str, tuple[set[int], set[int]]]  # member -> (actives, standbys)


def _assign(previous: Assignment, partitions: int = 4) -> Assignment:
    clients = {name: CopartitionedAssignment(actives=set(a), standbys=set(s), topics={"t"})
               for name, (a, s) in previous.items()}
    result = CopartitionedAssignor(topics={"t"}, cluster_asgn=clients, num_partitions=partitions,
                                   replicas=1).get_assignment()
    return {name: (set(a.actives), set(a.standbys)) for name, a in result.items()}


def _every_partition_active_once(assignment: dict[str, tuple[set[int], set[int]]], partitions: int = 4) -> None:
    actives = sorted(p for a, _ in assignment.values() for p in a)
    assert actives == list(range(partitions)), assignment
    for actives_of, standbys_of in assignment.values():
        assert not actives_of & standbys_of, assignment


def test_a_cold_worker_joining_gets_standbys_and_takes_its_share_once_it_held_them() -> None:
    joined = _assign({"old": ({0, 1, 2, 3}, set()), "new": (set(), set())})
    _every_partition_active_once(joined)
    assert joined["old"][0] == {0, 1, 2, 3} and joined["new"] == (set(), {0, 1, 2, 3}), joined

    # The new worker's standbys are current and it asks again: now it takes two, warm.
    warm = _assign({"old": joined["old"], "new": joined["new"]})
    _every_partition_active_once(warm)
    assert len(warm["new"][0]) == 2 and len(warm["old"][0]) == 2, warm
    assert warm["new"][0] <= joined["new"][1], warm


def test_partitions_of_a_worker_gone_move_at_once_to_whoever_is_there() -> None:
    # "gone" held 2 and 3 and is not in the group any more: no one holds them, so no one keeps them.
    after = _assign({"stays": ({0, 1}, set()), "other": (set(), set())})
    _every_partition_active_once(after)
    assert after["stays"][0] | after["other"][0] == {0, 1, 2, 3}, after
    assert after["other"][0] >= {2, 3} or after["stays"][0] >= {2, 3}, after


def test_a_third_worker_takes_partitions_it_holds_warm_whichever_faust_picks() -> None:
    # Six partitions, two workers with three each; a third joins: it gets standbys only.
    joined = _assign({"a": ({0, 1, 2}, {3, 4, 5}), "b": ({3, 4, 5}, {0, 1, 2}), "c": (set(), set())}, partitions=6)
    _every_partition_active_once(joined, partitions=6)
    assert joined["a"][0] == {0, 1, 2} and joined["b"][0] == {3, 4, 5} and not joined["c"][0], joined
    assert joined["c"][1], joined

    # Warm, it asks again. Faust's sticky assignment takes 0 and 3 from the others whatever
    # the standbys (checked: its own result below); the third holds 1 and 4 warm, and takes those.
    before = {"a": ({0, 1, 2}, {3, 5}), "b": ({3, 4, 5}, {0, 2}), "c": (set(), {1, 4})}
    clients = {name: CopartitionedAssignment(actives=set(a), standbys=set(s), topics={"t"})
               for name, (a, s) in before.items()}
    faust = seam.original_of(CopartitionedAssignor, "get_assignment")(
        CopartitionedAssignor(topics={"t"}, cluster_asgn=clients, num_partitions=6, replicas=1))
    assert faust["c"].actives == {0, 3}, faust
    warm = _assign(before, partitions=6)
    _every_partition_active_once(warm, partitions=6)
    assert warm["c"][0] == {1, 4} and [len(warm[c][0]) for c in "ab"] == [2, 2], warm


def test_a_worker_that_holds_nothing_it_would_get_takes_nothing_over() -> None:
    # Two workers with two partitions each, a third joins: Faust's sticky assignment keeps 2 + 2
    # (capacity ceil(4/3) = 2) and the third gets standbys only, which the rule leaves alone.
    after = _assign({"a": ({0, 1}, {2, 3}), "b": ({2, 3}, {0, 1}), "c": (set(), set())})
    _every_partition_active_once(after)
    assert after["a"][0] == {0, 1} and after["b"][0] == {2, 3} and not after["c"][0], after


NOTE = {"name": "Note", "externalIdField": "id", "schema": {
    "type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "round": {"type": "integer"},
        "history": {"type": "object", "additionalProperties": {"type": "integer"}}}}}
NOTES, BATCH = 4000, 1000
ASKED = "asking for a rebalance to take my share"


def _round(client: TestClient, headers: dict[str, str], round_: int, expected: dict[str, int]) -> None:
    """Every note merged with this round (its `name` only in round 0): a merge applied to a
    store that missed an earlier one, or applied twice, shows in `history`."""
    for start in range(0, NOTES, BATCH):
        notes = [{"id": f"n{i}", "round": round_, "history": {f"r{round_}": i}} for i in range(start, start + BATCH)]
        if round_ == 0:
            notes = [{**note, "name": f"note {note['id']}"} for note in notes]
        response = client.post("/api/resources/note/batch", json={"resources": notes}, headers=headers)
        assert response.status_code == 202, response.text
        expected[response.json()["data"]["batchId"]] = BATCH


def test_a_joining_worker_restores_its_share_in_bulk_and_takes_it_over_warm(
        settings: Settings, ingress: TestClient, tmp_path: Path) -> None:
    headers = bearer(tenant_token())
    assert ingress.post("/partner/schema-definitions", json=NOTE, headers=bearer(partner_token())).status_code == 200
    first = ServiceProcess(["-m", "processors.worker"], settings, tmp_path / "w1.log").start()
    second: ServiceProcess | None = None
    expected: dict[str, int] = {}
    try:
        with explained_by(first):
            _round(ingress, headers, 0, expected)
            for batch_id in expected:
                assert wait_terminal(ingress, batch_id, headers, 120)["status"] == "success"
        second = ServiceProcess(["-m", "processors.worker"], replace(settings, worker_web_port=free_port()),
                                tmp_path / "w2.log").start()
        with explained_by(first, second):
            _round(ingress, headers, 1, expected)  # while it joins
            wait_until(lambda: ASKED in second.log() and ready_generation(second), 180, 0.2,
                       what="the new worker to restore its standbys, ask for its share and take it",
                       seen=lambda: f"asked: {ASKED in second.log()}, ready in generation {ready_generation(second)}")
            _round(ingress, headers, 2, expected)  # the new worker merges into the stores it restored
            for batch_id in expected:
                data = wait_terminal(ingress, batch_id, headers, 120)
                assert data["status"] == "success", (batch_id, data["progress"], data["errors"])
    finally:
        if second is not None:
            assert second.stop() == 0, second.log()[-3000:]
        assert first.stop() == 0, first.log()[-3000:]

    # The first worker kept every partition while the second restored them as standbys (from
    # offset 0: its disk was empty) in bulk, and only then gave it its share. (The group's
    # leader logs the rule: the first worker, unless it left the group meanwhile.)
    assert "stays with its owner until its new one is warm" in first.log() + second.log(), first.log()[-3000:]
    restored = [line for line in second.log().splitlines() if "restoring " in line and ".resources[" in line]
    assert any(" from offset 0 to " in line for line in restored), restored
    wrong = {}
    for i in range(NOTES):
        got = ingress.get(f"/api/resources/note/n{i}", headers=headers).json()["data"]["result"]["data"]
        if got != {"id": f"n{i}", "name": f"note n{i}", "round": 2, "history": {f"r{r}": i for r in range(3)}}:
            wrong[i] = got
    assert not wrong, f"{len(wrong)} notes not merged once each: {list(wrong.items())[:3]}"
    counts = asyncio.run(committed_outcomes(settings))
    assert set(counts) == {(b, i) for b, n in expected.items() for i in range(n)}
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n != 1}
