"""Ports for the processes tests and benchmarks start: free, and out of the kernel's reach."""

from __future__ import annotations

import socket

import pytest

from harness import processes
from harness.processes import ephemeral_ports, free_port, free_port_block


def test_a_port_block_is_free_and_below_the_range_outgoing_connections_take() -> None:
    low, _ = ephemeral_ports()
    for _ in range(20):
        first = free_port_block(6)
        assert first + 6 <= low, (first, low)  # else a client's connection could take it before a node binds it
        sockets = [socket.socket() for _ in range(6)]
        try:
            for port, s in zip(range(first, first + 6), sockets):
                s.bind(("127.0.0.1", port))
        finally:
            for s in sockets:
                s.close()


def test_a_port_taken_by_a_listener_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", free_port()))
    listening.listen()
    taken = listening.getsockname()[1]
    others = list(range(taken - 40, taken))
    picks = iter([taken, *others])

    class Picks:
        def randrange(self, start: int, stop: int) -> int:
            return next(picks)

    monkeypatch.setattr(processes, "_PORTS", Picks())
    try:
        port = free_port()
        assert port != taken and port in others, (port, taken)  # the first pick was listened on
    finally:
        listening.close()
