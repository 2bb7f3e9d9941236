"""`processors.deadlines`: which waiting heads are due, per partition (no broker)."""

from __future__ import annotations

from processors.deadlines import STALE_SLACK, Deadlines


def test_a_partitions_heap_is_built_from_the_table_once_and_gives_what_is_due_earliest_first() -> None:
    deadlines, built = Deadlines(), []

    def stored() -> list[tuple[int, bytes]]:
        built.append(1)
        return [(30, b"c"), (10, b"a"), (20, b"b")]

    deadlines.add(0, 5, b"early")  # before the heap exists: the table holds it, not the heap
    assert list(deadlines.due(0, 20, stored)) == [(10, b"a"), (20, b"b")]
    deadlines.add(0, 25, b"d")
    assert list(deadlines.due(0, 29, stored)) == [(25, b"d")]
    assert list(deadlines.due(0, 100, stored)) == [(30, b"c")]
    assert built == [1], "the table is read once per assignment"


def test_an_entry_added_while_the_due_ones_are_taken_is_taken_too_if_due() -> None:
    deadlines = Deadlines()
    taken: list[bytes] = []
    for _, key in deadlines.due(1, 50, lambda: [(10, b"a")]):
        taken.append(key)
        if key == b"a":
            deadlines.add(1, 40, b"requeued")  # a drain that re-queues with a deadline already past
    assert taken == [b"a", b"requeued"]


def test_forgotten_partitions_are_read_from_the_table_again() -> None:
    deadlines = Deadlines()
    assert list(deadlines.due(2, 0, lambda: [(10, b"a")])) == []
    deadlines.forget({2})
    assert list(deadlines.due(2, 100, lambda: [(50, b"b")])) == [(50, b"b")]


def test_a_partition_is_ticked_only_to_build_its_heap_or_when_a_deadline_is_due() -> None:
    deadlines = Deadlines()
    assert deadlines.needs_tick(3, 0), "a partition whose heap is not built yet is not ticked"
    assert list(deadlines.due(3, 0, lambda: [])) == []
    assert not deadlines.needs_tick(3, 10**12), "an idle partition (nothing waits) is ticked"
    deadlines.add(3, 100, b"a")
    assert not deadlines.needs_tick(3, 99) and deadlines.needs_tick(3, 100)
    assert list(deadlines.due(3, 100, lambda: [])) == [(100, b"a")]
    assert not deadlines.needs_tick(3, 200), "a partition whose deadlines were all taken is still ticked"
    deadlines.forget({3})
    assert deadlines.needs_tick(3, 0), "a partition assigned again is not ticked to read its table"


def test_a_key_is_known_to_have_no_pending_entry_only_once_its_partitions_heap_is_built() -> None:
    deadlines = Deadlines()
    assert deadlines.may_be_pending(4, b"x"), "before the heap is built, every key may wait"
    assert list(deadlines.due(4, 0, lambda: [(10, b"a"), (30, b"a")])) == []
    assert deadlines.may_be_pending(4, b"a") and not deadlines.may_be_pending(4, b"x")
    deadlines.add(4, 20, b"x")  # a record of x came to wait
    assert deadlines.may_be_pending(4, b"x")
    assert deadlines.may_be_pending(5, b"x"), "another partition's heap is not built: it may"


def test_a_key_may_be_pending_until_its_entry_is_removed() -> None:
    deadlines = Deadlines()
    list(deadlines.due(6, 0, lambda: [(10, b"a")]))
    deadlines.add(6, 40, b"a")  # re-queued with a later deadline
    assert list(deadlines.due(6, 20, lambda: [])) == [], "its old deadline is not its entry's any more"
    assert list(deadlines.due(6, 40, lambda: [])) == [(40, b"a")]
    assert deadlines.may_be_pending(6, b"a"), "taken, its entry is still stored until the tick removes it"
    deadlines.remove(6, b"a")
    assert not deadlines.may_be_pending(6, b"a")
    deadlines.forget({6})
    assert deadlines.may_be_pending(6, b"a"), "a partition assigned again may hold anything until read"


def test_a_released_record_is_neither_due_nor_ticked_at_its_old_deadline() -> None:
    deadlines = Deadlines()
    list(deadlines.due(7, 0, lambda: []))
    deadlines.add(7, 60_000, b"a")  # waits for its pins' answers, 60 s at most
    deadlines.add(7, 90_000, b"b")
    deadlines.remove(7, b"a")  # answered within a round trip: applied, its entry deleted
    assert not deadlines.may_be_pending(7, b"a")
    assert not deadlines.needs_tick(7, 60_000), "a tick (an event, a transaction) for nothing"
    assert list(deadlines.due(7, 89_999, lambda: [])) == []
    assert deadlines.needs_tick(7, 90_000)
    assert list(deadlines.due(7, 90_000, lambda: [])) == [(90_000, b"b")]


def test_memory_follows_the_records_waiting_now_not_every_record_that_waited() -> None:
    deadlines = Deadlines()
    list(deadlines.due(8, 0, lambda: [(5, b"old")]))
    for n in range(100_000):  # a minute of records released a round trip after they came to wait
        key = b"r%d" % n
        deadlines.add(8, 60_000 + n, key)
        deadlines.remove(8, key)
    deadlines.add(8, 200_000, b"still")
    heap = deadlines._heaps[8]
    assert len(heap) <= 2 * 2 + STALE_SLACK + 1, f"{len(heap)} heap entries for 2 waiting records"
    assert list(deadlines.due(8, 10**9, lambda: [])) == [(5, b"old"), (200_000, b"still")]
