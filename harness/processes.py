"""Real processes of the service, and waiting for them: what the tests and the benchmarks share.

A service process (`ServiceProcess`) runs with the environment of one `Settings` and its own log
file; `wait_until` waits on a condition and says what it saw when it gives up.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from reach.config import PROJECT_ROOT, Settings

T = TypeVar("T")


def free_port() -> int:
    """A free port for a process to listen on (`free_port_block`)."""
    return free_port_block(1)


# Picks ports at random from the block below the ephemeral range (own instance: tests seed `random`).
_PORTS = random.Random()


def ephemeral_ports() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's setting; else IANA's range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def free_port_block(size: int) -> int:
    """A first port of `size` consecutive free ones (a cluster's nodes take two each), below
    the ephemeral range: a port found free there can be taken by any outgoing connection — a
    client of another test's broker — before a process that starts slowly binds it (a Kafka
    node's JVM takes seconds, and failed with "Address already in use" once in a full run)."""
    low, _ = ephemeral_ports()
    for _ in range(200):
        first = _PORTS.randrange(10_000, low - size) if low - size > 10_000 else _kernel_pick()
        if first + size > 65000:
            continue
        sockets = []
        try:
            for port in range(first, first + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {size} consecutive free ports found")


def _kernel_pick() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(probe: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.2,
               what: str = "condition", seen: Callable[[], object] | None = None) -> T:
    """Call `probe` until it returns something truthy; fail after `timeout_s`.

    The failure names `what` was awaited and, when `seen` is given, what it shows at that moment.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # the process may still be starting
            last_error = exc
        time.sleep(interval_s)
    saw = ""
    if seen is not None:
        try:
            saw = f"; saw {seen()}"
        except Exception as exc:
            saw = f"; could not tell what it saw ({exc!r})"
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{saw}; last error: {last_error!r}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read `settings` (all of them: `Settings.to_env`)."""
    return {**os.environ, **settings.to_env()}


def proc_stat(pid: int, thread: int | None = None) -> list[str]:
    """The fields of `/proc/<pid>/stat` (or of one of its threads': `task/<thread>/stat`) after
    the command name (state, ppid, …: proc(5) from field 3 on); OSError if there is no such
    process or thread."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    return Path(path).read_text().rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc), in pid order."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(proc_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether `pid` runs (an exited child its parent has not reaped yet does not)."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


OUR_PACKAGES = ("ingest", "processors", "schemas", "state", "topics", "reach")



@dataclass
class ServiceProcess:
    """A child process of the service (worker or ingress) with its log file."""

    args: list[str]
    settings: Settings
    log_path: Path
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The process (running or ended); RuntimeError before `start`."""
        if self._popen is None:
            raise RuntimeError(f"{' '.join(self.args)} was never started")
        return self._popen

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")
        self._popen = subprocess.Popen([sys.executable, *self.args], env=settings_env(self.settings),
                                     cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stacks(self, timeout_s: float = 10.0, limit: int = 12000) -> str:
        """A running worker's threads and asyncio tasks with their stacks ('' for other processes).

        Mode's worker prints them on SIGUSR1 once its handler is installed (it logs "Worker
        ready" after that); before, the signal would kill the process, so none is sent.
        """
        if not self.started or self.proc.poll() is not None or "processors.worker" not in self.args:
            return ""
        log = self.log()
        if "Worker ready" not in log[max(log.rfind("starting again"), 0):]:  # this run's handler is not installed yet
            return ""
        before = len(log)
        self.proc.send_signal(signal.SIGUSR1)
        deadline, size = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline and (len(self.log()) == before or len(self.log()) != size):
            size = len(self.log())
            time.sleep(0.5)  # written in one burst: done once the log stops growing
        # The whole dump stays in the log; the tasks and threads in our own code tell a stall.
        blocks = re.split(r"\n(?=\s*TASK |THREAD )", self.log()[before:])
        ours = [_frames(b) for b in blocks if any(f"{PROJECT_ROOT}/{part}/" in b for part in OUR_PACKAGES)]
        return "\n".join(ours)[-limit:]


def _frames(block: str) -> str:
    """A task's or thread's header and its `File ...` lines, without the local variables."""
    lines = block.splitlines()
    return "\n".join([lines[0], *(line for line in lines[1:] if line.lstrip().startswith("File "))])
