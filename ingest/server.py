"""`reach ingress`: serve the ingress with uvicorn, in N processes sharing one port.

One Python process parses, checks and encodes uploads on one core; `REACH_INGRESS_PROCESSES`
(default: the number of cores) processes share the listening socket, created here and inherited
by each, so the kernel hands every new connection to a process that is waiting in `accept`.
Process i is ingress `<REACH_INGRESS_ID>-i`: its own transactional producers (a restarted
process fences what its predecessor left open) and its own read models on disk. This process
only supervises: a child that dies is started again, SIGTERM/SIGINT stops them all, and a child
whose supervisor dies (even by SIGKILL) is stopped by the kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from ingest.app import create_app
from ingest.context import ingress_of_app
from ingest.metrics import prepare_multiprocess, process_exited
from reach.config import Settings
from reach.shutdown import StopRequested
from topics import create_topics, service_topics

log = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0
_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings.from_env()
    if argv[:1] == ["--child"]:
        serve_child(settings, index=int(argv[1]), fd=int(argv[2]), supervisor=int(argv[3]))
        return
    asyncio.run(create_topics(settings.bootstrap_servers, service_topics(settings).all()))
    if settings.ingress_processes <= 1:
        app = create_app(settings)
        IngressServer(uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="info",
                                     access_log=False, timeout_graceful_shutdown=graceful_shutdown_s(settings)),
                      app).run()
        return
    sys.exit(supervise(settings))


class IngressServer(uvicorn.Server):
    """uvicorn's server, telling the app when it is asked to stop (`Ingress.stopping`), so
    that responses without an end of their own (event streams) end at once instead of holding
    the stop until the graceful timeout."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ingress_of_app(self.app).stopping = True
        super().handle_exit(sig, frame)


def graceful_shutdown_s(settings: Settings) -> int:
    """How long a stopping ingress lets requests finish: an upload in flight may take up to the
    produce timeout; a client following a batch's events (which never ends by itself) is then
    cut off and resumes on another ingress with Last-Event-ID."""
    return math.ceil(settings.produce_timeout_s) + 2  # whole seconds: uvicorn's type


def child_settings(settings: Settings, index: int) -> Settings:
    """The settings of ingress process `index` of several."""
    return replace(settings, ingress_id=f"{settings.ingress_id}-{index}")


def serve_child(settings: Settings, index: int, fd: int, supervisor: int) -> None:
    """Serve on the inherited listening socket `fd` as process `index`."""
    _stop_with(supervisor)
    sock = socket.socket(fileno=fd)
    app = create_app(child_settings(settings, index))
    config = uvicorn.Config(app, log_level="info", access_log=False,
                            timeout_graceful_shutdown=graceful_shutdown_s(settings))
    IngressServer(config, app).run(sockets=[sock])


def supervise(settings: Settings) -> int:
    """Run `settings.ingress_processes` children on one socket until stopped; 0 once they all stopped."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    stop = StopRequested()
    sock = socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.http_host, settings.http_port))
    sock.listen(2048)
    sock.set_inheritable(True)

    def start(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "ingest.server", "--child", str(index), str(sock.fileno()),
                                 str(os.getpid())], pass_fds=(sock.fileno(),))

    # The children's metrics add up in one folder (`ingest.metrics`).
    prepare_multiprocess(settings.data_dir / "metrics" / settings.ingress_id)
    children = {i: start(i) for i in range(settings.ingress_processes)}
    log.info("ingress: %d processes on http://%s:%d", len(children), settings.http_host, settings.http_port)
    while not stop:
        for index, child in list(children.items()):
            if child.poll() is not None and not stop:
                log.error("ingress process %d exited with %s; starting it again", index, child.returncode)
                process_exited(child.pid)
                time.sleep(RESTART_DELAY_S)
                children[index] = start(index)
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sock.close()
    return 0


def _stop_with(supervisor: int) -> None:
    """Ask Linux to send this process SIGTERM when its supervisor dies (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before this took effect
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
