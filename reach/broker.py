"""A local single-node Apache Kafka broker (KRaft) run from Maven Central jars.

The jars are fetched once by `broker/pom.xml` into a cache folder outside git; the broker runs
as a plain Java process with its own config, data folder and log file. Nothing here is used
when `KAFKA_BOOTSTRAP_SERVERS` points at an external cluster.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from reach.config import PROJECT_ROOT, Settings
from reach.shutdown import StopRequested

KAFKA_VERSION = "4.1.2"
POM = PROJECT_ROOT / "broker" / "pom.xml"
DEFAULT_LIBS = PROJECT_ROOT / ".cache" / f"kafka-{KAFKA_VERSION}" / "libs"

LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
num.recovery.threads.per.data.dir=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
min.insync.replicas=1
"""


def fetch_jars(libs: Path = DEFAULT_LIBS, pom: Path = POM) -> Path:
    """Copy the jars `pom` depends on (default: the broker's) from Maven Central into `libs`
    unless they are already there."""
    marker = libs / ".complete"
    if marker.exists():
        return libs
    tmp = libs.with_name(libs.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        check=True,
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


async def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a metadata request to `bootstrap` succeeds."""
    from aiokafka.admin import AIOKafkaAdminClient

    # A refused connection is the expected answer while the broker boots: keep it quiet.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


@dataclass
class LocalBroker:
    """One KRaft broker+controller on loopback, with its files under `work_dir`."""

    work_dir: Path
    port: int = 19092
    controller_port: int = 19093
    host: str = "127.0.0.1"
    libs: Path = DEFAULT_LIBS
    heap: str = "-Xms512m -Xmx512m"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "logs" / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.work_dir / "kafka.pid"

    def pid(self) -> int | None:
        """The broker's pid if its process is alive."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def _write_config(self) -> tuple[Path, Path]:
        data = self.work_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        server = self.work_dir / "server.properties"
        server.write_text(SERVER_PROPERTIES.format(
            host=self.host, port=self.port, controller_port=self.controller_port, data_dir=data))
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES.format(log_file=self.log_file))
        return server, log4j

    def _java(self, log4j: Path, heap: str) -> list[str]:
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
        return [java, *heap.split(), f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.log_file.parent}", "-cp", f"{self.libs}/*"]

    def _format(self, server: Path, log4j: Path) -> None:
        if (self.work_dir / "data" / "meta.properties").exists():
            return
        # Static voters (controller.quorum.voters): format without --standalone.
        # The storage tool needs more than the 256 MB tools default (KAFKA-19890).
        subprocess.run(
            [*self._java(log4j, "-Xmx1G"), "kafka.tools.StorageTool", "format",
             "-t", _cluster_id(), "-c", str(server)],
            check=True, stdout=subprocess.DEVNULL,
        )

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker and wait until it answers; reuse it if it already runs.

        Returns True when this call started the process.
        """
        if asyncio.run(broker_answers(self.bootstrap)):
            return False  # ours from an earlier start, or one the operator runs there
        fetch_jars(self.libs)
        server, log4j = self._write_config()
        self._format(server, log4j)
        jvm = ["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-Djava.awt.headless=true"]
        out = open(self.work_dir / "logs" / "stdout.log", "ab")
        proc = subprocess.Popen(
            [*self._java(log4j, self.heap), *jvm, "kafka.Kafka", str(server)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {proc.returncode}; see {self.log_file}")
            if asyncio.run(broker_answers(self.bootstrap, timeout_s=1.0)):
                return True
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Kafka did not answer within {timeout_s}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker with SIGTERM (a clean shutdown), SIGKILL after `timeout_s`."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def _cluster_id() -> str:
    # Kafka's Uuid string form: URL-safe base64 of 16 bytes, unpadded. One that starts with
    # '-' would be read as an option by the storage tool (Kafka's own generator avoids them).
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so that it does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def dev_broker(settings: Settings) -> LocalBroker:
    """The local broker that `settings` point at, with its files under the data folder."""
    host, _, port = settings.bootstrap_servers.partition(":")
    return LocalBroker(work_dir=settings.data_dir / "kafka", host=host, port=int(port),
                       controller_port=int(port) + 1)


def main(argv: list[str] | None = None) -> int:
    """`reach broker start|stop|status|run`: manage the local dev broker."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    broker = dev_broker(Settings.from_env())
    if command == "start":
        started = broker.start()
        print(f"kafka {KAFKA_VERSION} {'started' if started else 'already running'} on {broker.bootstrap}")
    elif command == "stop":
        broker.stop()
        print("kafka stopped")
    elif command == "status":
        up = asyncio.run(broker_answers(broker.bootstrap))
        print(f"kafka on {broker.bootstrap}: {'up' if up else 'down'}")
        return 0 if up else 1
    elif command == "run":
        stop = StopRequested()
        broker.start()
        print(f"kafka {KAFKA_VERSION} on {broker.bootstrap}; logs in {broker.log_file}")
        while not stop:
            signal.pause()
        broker.stop()
    else:
        print("usage: reach broker start|stop|status|run", file=sys.stderr)
        return 2
    return 0
