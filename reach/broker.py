"""A local Apache Kafka (KRaft) of one node, or a cluster of three, run from Maven Central jars.

The jars are fetched once by `broker/pom.xml` into a cache folder outside git; each node runs
as a plain Java process (broker and controller in one) with its own config, data folder and log
file. A cluster of three replicates Kafka's internal topics three times with
`min.insync.replicas=2` (and so every topic of ours, created with replication factor 3), as
production clusters do: one node may be down and writes go on. Nothing here is used when
`KAFKA_BOOTSTRAP_SERVERS` points at an external cluster.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from reach.config import LOCAL_BROKER_PORT, PROJECT_ROOT, Settings, local_ports
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
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
num.partitions=1
num.recovery.threads.per.data.dir=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
default.replication.factor={replication}
min.insync.replicas={min_isr}
request.timeout.ms={request_timeout_ms}
"""


# How long a node waits for another node's answer (its transaction coordinator's commit and
# abort markers among them). Kafka's 30 s held every transaction that had touched a paused
# node's partitions for 30 s after their leaders had moved (tests/test_cluster_faults.py).
BROKER_REQUEST_TIMEOUT_MS = 10_000


def fetch_jars(libs: Path = DEFAULT_LIBS, pom: Path = POM) -> Path:
    """Copy the jars `pom` depends on (default: the broker's) from Maven Central into `libs`
    unless they are already there (fetched for this very `pom`)."""
    marker = libs / ".complete"
    wanted = hashlib.sha256(pom.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text().strip() == wanted:
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
    marker.write_text(wanted + "\n")
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
    """One KRaft broker+controller on loopback, with its files under `work_dir`: alone (the
    defaults), or node `node_id` of a cluster whose controllers are `voters`."""

    work_dir: Path
    port: int = 19092
    controller_port: int = 19093
    host: str = "127.0.0.1"
    libs: Path = DEFAULT_LIBS
    heap: str = "-Xms512m -Xmx512m"
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters; empty: this node alone
    replication: int = 1  # of Kafka's internal topics, and the default of new ones
    cluster_id_file: Path | None = None  # a cluster's nodes share one id; None: this node's own
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

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
            node_id=self.node_id, voters=self.voters or f"{self.node_id}@{self.host}:{self.controller_port}",
            host=self.host, port=self.port, controller_port=self.controller_port, data_dir=data,
            replication=self.replication, min_isr=min(2, self.replication),
            request_timeout_ms=BROKER_REQUEST_TIMEOUT_MS))
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES.format(log_file=self.log_file))
        return server, log4j

    def _java(self, log4j: Path, heap: str) -> list[str]:
        return [_java_binary(), *heap.split(), f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.log_file.parent}", "-cp", f"{self.libs}/*"]

    def _format(self, server: Path, log4j: Path) -> None:
        if (self.work_dir / "data" / "meta.properties").exists():
            return
        # Static voters (controller.quorum.voters): format without --standalone.
        # The storage tool needs more than the 256 MB tools default (KAFKA-19890).
        done = subprocess.run(
            [*self._java(log4j, "-Xmx1G"), "kafka.tools.StorageTool", "format",
             "-t", self._cluster_id(), "-c", str(server)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if done.returncode != 0:  # what the tool said, not only its exit status (seen once, not reproduced)
            raise RuntimeError(f"formatting the broker's storage in {self.work_dir} failed with exit status "
                               f"{done.returncode}: {done.stderr.strip()[-2000:] or '(nothing on stderr)'}")

    def _cluster_id(self) -> str:
        if self.cluster_id_file is None:
            return _cluster_id()
        if not self.cluster_id_file.exists():
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(_cluster_id())
        return self.cluster_id_file.read_text().strip()

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker and wait until it answers; reuse it if it already runs.

        Returns True when this call started the process.
        """
        if asyncio.run(broker_answers(self.bootstrap)):
            return False  # ours from an earlier start, or one the operator runs there
        self.launch()
        self.wait_answering(timeout_s)
        return True

    def launch(self) -> None:
        """Start the node's process without waiting for it (a cluster's node answers only once
        a majority of its controllers run)."""
        fetch_jars(self.libs)
        server, log4j = self._write_config()
        self._format(server, log4j)
        # C1 alone (`TieredStopAtLevel=1`): a node started here serves a run, a test session or a
        # benchmark on cores it shares with the service, and C2 took about half of its CPU
        # compiling for the first million records and more; C1's code costs ~1.5 µs more per
        # record once C2 would be done (docs/operating.md, "The local broker").
        jvm = ["-server", "-XX:TieredStopAtLevel=1", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-Djava.awt.headless=true"]
        out = open(self.work_dir / "logs" / "stdout.log", "ab")
        self._proc = subprocess.Popen(
            [*self._java(log4j, self.heap), *jvm, "kafka.Kafka", str(server)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        self.pid_file.write_text(str(self._proc.pid))

    def wait_answering(self, timeout_s: float = 90.0) -> None:
        """Wait until the node launched by `launch` answers; stop it and raise if it does not."""
        deadline = time.monotonic() + timeout_s
        assert self._proc is not None, "wait_answering follows launch"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self._proc.returncode}; see {self.log_file}")
            if asyncio.run(broker_answers(self.bootstrap, timeout_s=1.0)):
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Kafka did not answer within {timeout_s}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker with SIGTERM (a clean shutdown), SIGKILL after `timeout_s`."""
        self.wait_stopped(self.ask_to_stop(), timeout_s)

    def ask_to_stop(self) -> int | None:
        """Send the node SIGTERM; its pid, or None if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
        else:
            os.kill(pid, signal.SIGTERM)
        return pid

    def wait_stopped(self, pid: int | None, timeout_s: float = 30.0) -> None:
        """Wait until the process `ask_to_stop` signalled has exited; SIGKILL after `timeout_s`."""
        if pid is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def hanging_transactions(bootstrap: str, broker_id: int, libs: Path = DEFAULT_LIBS) -> list[str]:
    """What Kafka's own `kafka-transactions.sh find-hanging --broker-id <id>` finds: one line per
    transaction left open on that broker's partitions that its coordinator no longer knows
    (such a transaction holds back every read_committed consumer of its partition)."""
    found = subprocess.run(
        [_java_binary(), "-Xmx256m", "-cp", f"{fetch_jars(libs)}/*", "org.apache.kafka.tools.TransactionsCommand",
         "--bootstrap-server", bootstrap, "find-hanging", "--broker-id", str(broker_id)],
        capture_output=True, text=True, timeout=120, check=True)
    lines = [line for line in found.stdout.splitlines() if line.strip()]
    return lines[1:]  # after the header


def _java_binary() -> str:
    """`$JAVA_HOME/bin/java`, else `java` from the PATH."""
    return os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"


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


@dataclass
class LocalCluster:
    """`nodes` local nodes (1 or 3): node i listens on `port` + 2(i-1) and its controller on
    the port after; one node keeps its files in `work_dir` itself, several in `node-<i>`."""

    work_dir: Path
    nodes: int = 1
    port: int = LOCAL_BROKER_PORT
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.nodes not in (1, 3):
            raise ValueError(f"a local Kafka has 1 or 3 nodes (got {self.nodes})")
        ports = local_ports(self.nodes, self.port)
        voters = ",".join(f"{i + 1}@{self.host}:{controller}" for i, (_, controller) in enumerate(ports))
        self.brokers = [
            LocalBroker(work_dir=self.work_dir if self.nodes == 1 else self.work_dir / f"node-{i + 1}", port=port,
                        controller_port=controller, host=self.host, node_id=i + 1,
                        voters=voters if self.nodes > 1 else "", replication=self.nodes,
                        cluster_id_file=self.work_dir / "cluster.id" if self.nodes > 1 else None)
            for i, (port, controller) in enumerate(ports)]

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def log_file(self) -> Path:
        return self.brokers[0].log_file

    def node(self, node_id: int) -> LocalBroker:
        if not 1 <= node_id <= self.nodes:
            raise ValueError(f"no node {node_id}: this local Kafka has nodes 1 to {self.nodes}")
        return self.brokers[node_id - 1]

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start every node not running and wait until each answers; False if all ran already."""
        down = [b for b in self.brokers if b.pid() is None and not asyncio.run(broker_answers(b.bootstrap))]
        for broker in down:
            broker.launch()
        for broker in down:
            broker.wait_answering(timeout_s)
        return bool(down)

    def start_node(self, node_id: int, timeout_s: float = 90.0) -> bool:
        """Start one node again (the others running); False if it ran already."""
        return self.node(node_id).start(timeout_s)

    def stop(self, node_id: int | None = None) -> None:
        """Stop one node, or all of them at once (one after another, the last would wait for a
        controller quorum that is gone), each with SIGTERM, SIGKILL after 30 s."""
        brokers = [self.node(node_id)] if node_id is not None else self.brokers
        for broker, pid in [(broker, broker.ask_to_stop()) for broker in brokers]:
            broker.wait_stopped(pid)

    def status(self) -> list[str]:
        """One line per node: `node <id> <host:port> pid <pid>`, or `... down`."""
        return [f"node {b.node_id} {b.bootstrap} " + (f"pid {pid}" if (pid := b.pid()) is not None else "down")
                for b in self.brokers]


def dev_broker(settings: Settings) -> LocalCluster:
    """The local Kafka that `settings` point at (`broker_nodes` nodes from `local_broker_port`),
    with its files under the data folder."""
    return LocalCluster(work_dir=settings.data_dir / ("kafka" if settings.broker_nodes == 1 else "kafka-cluster"),
                        nodes=settings.broker_nodes, port=settings.local_broker_port)


def main(argv: list[str] | None = None) -> int:
    """`reach broker start [--nodes N | --node N] | stop [--node N] | status | run`: the local Kafka."""
    import argparse

    parser = argparse.ArgumentParser(prog="reach broker", description="The local Kafka (KRaft) of this project.")
    parser.add_argument("command", nargs="?", default="status", choices=["start", "stop", "status", "run"])
    parser.add_argument("--nodes", type=int, choices=[1, 3], help="how many nodes (default: REACH_BROKER_NODES, 1)")
    parser.add_argument("--node", type=int, help="start or stop this node alone")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    if args.nodes is not None:
        settings = settings.with_local_broker(args.nodes)
    cluster = dev_broker(settings)
    if args.command == "start" and args.node is not None:
        started = cluster.start_node(args.node)
        print(f"node {args.node} {'started' if started else 'already running'} on {cluster.node(args.node).bootstrap}")
    elif args.command == "start":
        started = cluster.start()
        print(f"kafka {KAFKA_VERSION} ({cluster.nodes} node{'s' if cluster.nodes > 1 else ''}) "
              f"{'started' if started else 'already running'} on {cluster.bootstrap}")
    elif args.command == "stop":
        cluster.stop(args.node)
        print(f"node {args.node} stopped" if args.node is not None else "kafka stopped")
    elif args.command == "status":
        lines = cluster.status()
        print("\n".join(lines))
        return 0 if all(not line.endswith(" down") for line in lines) else 1
    else:
        stop = StopRequested()
        cluster.start()
        print(f"kafka {KAFKA_VERSION} on {cluster.bootstrap}; logs in {cluster.log_file}")
        while not stop:
            signal.pause()
        cluster.stop()
    return 0
