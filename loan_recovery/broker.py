"""A local Apache Kafka broker (KRaft, one combined broker+controller node) for dev and tests,
and a local three-node cluster (:class:`LocalCluster`) for the failure tests of ARCHITECTURE.md §8
("tested against a three-broker cluster losing a broker").

The jars come from Maven Central (``scripts/fetch-kafka.sh``) into a cache directory; each data
directory holds one independent broker (or cluster: one sub-directory per node) with its own
config, logs, pid and ports, so tests and the demo can run side by side.

Example (needs Java 17 and the fetched jars)::

    broker = LocalBroker(Path("/tmp/kafka-demo"))
    bootstrap = broker.start()      # waits until the broker answers metadata requests
    ...
    broker.stop()

    cluster = LocalCluster(Path("/tmp/kafka-3"), nodes=3)   # replication 3, min.insync.replicas 2
    cluster.start(); cluster.kill(2); cluster.start()  # restarts node 2; cluster.stop()
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import LoanRecoveryError

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
HEAP_OPTS = "-Xms256m -Xmx512m"
# Kafka's own bin/kafka-run-class.sh (KAFKA_JVM_PERFORMANCE_OPTS): G1 aiming at 20 ms pauses,
# not the JVM's default 200 ms target, which lets a collection pause the broker -- every
# commit and fetch waiting on it -- for far longer.
JVM_PERFORMANCE_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
CLUSTER_HEAP_OPTS = "-Xms128m -Xmx384m"  # three JVMs share a small machine


def cache_dir() -> Path:
    return Path(os.environ.get("LOANREC_CACHE_DIR", Path.home() / ".cache" / "loan-recovery"))


def default_data_dir() -> Path:
    return cache_dir() / "broker"


class BrokerError(LoanRecoveryError, RuntimeError):
    """The local broker could not be fetched, started or reached."""


@dataclass(frozen=True)
class BrokerStatus:
    pid: int
    bootstrap_servers: str
    data_dir: Path


def kafka_version() -> str:
    pom = (SCRIPTS_DIR / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    if not match:
        raise BrokerError(f"{SCRIPTS_DIR / 'pom.xml'} has no <kafka.version> property")
    return match.group(1)


def kafka_classpath() -> str:
    """The broker's classpath, fetching the jars first if they are missing."""
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home and (Path(kafka_home) / "libs").is_dir():
        return str(Path(kafka_home) / "libs" / "*")
    lib = cache_dir() / f"kafka-{kafka_version()}" / "lib"
    if not (lib / ".complete").exists():
        result = subprocess.run([str(SCRIPTS_DIR / "fetch-kafka.sh")], check=False)
        if result.returncode != 0:
            raise BrokerError(
                "could not fetch the Kafka jars: install Maven (mvn) or set KAFKA_HOME to an "
                "unpacked Apache Kafka 4.x release"
            )
    return str(lib / "*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kafka_uuid() -> str:
    # The storage tool parses a cluster id starting with "-" as an option, so draw again.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    node_id: int = 1,
    voters: str | None = None,
    replicas: int = 1,
) -> str:
    # Replication factors and min ISR of 1 so that transactions work on a single broker;
    # in a cluster, every topic (internal ones too) has ``replicas`` copies and needs all but
    # one in sync. Few internal partitions so that a fresh broker is ready in seconds.
    min_isr = str(max(1, replicas - 1))
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.backoff.ms": "1000",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka.server.KafkaServer
logger.kafka.level = INFO
"""


class LocalBroker:
    """One KRaft broker+controller bound to 127.0.0.1, living in ``data_dir``."""

    heap_opts = HEAP_OPTS

    def __init__(self, data_dir: Path | None = None, extra: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir or default_data_dir()).resolve()
        # Settings added to server.properties (a test's authorizer, for instance).
        self.extra = dict(extra or {})

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def _port_file(self) -> Path:
        return self.data_dir / "broker.port"

    @property
    def _properties(self) -> Path:
        return self.data_dir / "server.properties"

    def status(self) -> BrokerStatus | None:
        """The running broker of this data dir, or None (stale pid files are removed)."""
        try:
            pid = int(self._pid_file.read_text())
            port = int(self._port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not self._is_our_process(pid):
            self._pid_file.unlink(missing_ok=True)
            return None
        return BrokerStatus(pid, f"127.0.0.1:{port}", self.data_dir)

    def _is_our_process(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self._properties).encode() in cmdline

    def start(self, timeout_s: float = 120.0) -> BrokerStatus:
        """Start the broker (or return the running one) once it answers metadata requests."""
        running = self.status()
        if running:
            return running
        process, bootstrap = self._launch()
        try:
            self._wait_until_ready(process, bootstrap, timeout_s)
        except BrokerError:
            self.stop()
            raise
        return BrokerStatus(process.pid, bootstrap, self.data_dir)

    def _configure(self) -> int:
        """Write ``server.properties``; the client port."""
        port, controller_port = free_port(), free_port()
        extra = "".join(f"{key}={value}\n" for key, value in self.extra.items())
        self._properties.write_text(
            _server_properties(self.data_dir, port, controller_port) + extra
        )
        return port

    def _cluster_id(self) -> str:
        return _kafka_uuid()

    def java_command(self, classpath: str, log4j: Path) -> list[str]:
        """The JVM's command line up to the main class. The collector's pauses go to
        ``gc.log`` in the data dir (:meth:`gc_pauses_ms` reads them), as Kafka's own
        scripts keep a ``kafkaServer-gc.log``."""
        return [
            "java",
            *self.heap_opts.split(),
            *JVM_PERFORMANCE_OPTS,
            f"-Xlog:gc:file={self.data_dir / 'gc.log'}:time,uptime:filecount=2,filesize=10m",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
        ]

    def gc_pauses_ms(self) -> list[float]:
        """The collector's stop-the-world pauses (ms) so far, from the ``gc.log*`` files of
        :meth:`java_command`, e.g. ``GC(7) Pause Young (Normal) 60M->12M(256M) 4.210ms``."""
        pause = re.compile(r"Pause .* (\d+(?:\.\d+)?)ms$", re.M)
        logs = sorted(self.data_dir.glob("gc.log*"))
        return [float(x) for log in logs for x in pause.findall(log.read_text())]

    def _launch(self) -> tuple[subprocess.Popen, str]:
        """Start the JVM (formatting a new data dir first); do not wait for it."""
        classpath = kafka_classpath()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self._configure()
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.data_dir / "server.log"))
        java = self.java_command(classpath, log4j)
        if not (self.data_dir / "kraft-logs" / "meta.properties").exists():
            self._format(java)
        with open(self.data_dir / "broker.out", "ab") as out:
            process = subprocess.Popen(
                [*java, "kafka.Kafka", str(self._properties)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(process.pid))
        self._port_file.write_text(str(port))
        return process, f"127.0.0.1:{port}"

    def _format(self, java: list[str]) -> None:
        result = subprocess.run(
            [
                *java,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self._cluster_id(),
                "-c",
                str(self._properties),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            detail = result.stderr or result.stdout
            raise BrokerError(f"formatting {self.data_dir} failed: {detail}")

    def _wait_until_ready(
        self, process: subprocess.Popen, bootstrap: str, timeout_s: float, brokers: int = 1
    ) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {process.returncode}; "
                    f"see {self.data_dir / 'broker.out'} and {self.data_dir / 'server.log'}"
                )
            try:
                metadata = admin.list_topics(timeout=2)
                if len(metadata.brokers) >= brokers:
                    return
                time.sleep(0.5)
            except Exception:
                time.sleep(0.5)
        raise BrokerError(f"the broker did not answer on {bootstrap} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop exactly the process this data dir started. Returns False if none was running."""
        try:
            pid = int(self._pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        if not self._is_our_process(pid):
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._is_alive(pid):
            time.sleep(0.2)
        if self._is_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while self._is_alive(pid):
                time.sleep(0.1)
        self._pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL the process this data dir started (a crash, for failure tests)."""
        try:
            pid = int(self._pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return False
        if not self._is_our_process(pid):
            return False
        os.kill(pid, signal.SIGKILL)
        while self._is_alive(pid):
            time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)
        return True

    def _is_alive(self, pid: int) -> bool:
        # Reap it if it is our child, so that it does not linger as a zombie.
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return False
        except ChildProcessError:
            pass
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return False
        return state != "Z"


class ClusterNode(LocalBroker):
    """One node of a :class:`LocalCluster`: fixed ports (its peers know them as voters, and a
    restarted node must come back where it was) and the cluster's shared id."""

    heap_opts = CLUSTER_HEAP_OPTS

    def __init__(
        self, data_dir: Path, node_id: int, ports: tuple[int, int], voters: str, cluster_id: str
    ) -> None:
        super().__init__(data_dir)
        self.node_id, self.ports, self.voters, self.cluster_id = node_id, ports, voters, cluster_id
        self.replicas = len(voters.split(","))

    def _configure(self) -> int:
        port, controller_port = self.ports
        self._properties.write_text(
            _server_properties(
                self.data_dir, port, controller_port, self.node_id, self.voters, self.replicas
            )
        )
        return port

    def _cluster_id(self) -> str:
        return self.cluster_id


class LocalCluster:
    """``nodes`` KRaft nodes on 127.0.0.1, each a combined broker+controller with its own data
    dir (``data_dir/node-<id>``) and ports; every topic is replicated to all of them with
    ``min.insync.replicas`` one less (3 nodes: replication 3, min ISR 2). The layout (ids,
    ports, cluster id) is written to ``data_dir/cluster.json`` so ``status`` and ``stop`` from
    another process find the same nodes."""

    def __init__(self, data_dir: Path | None = None, nodes: int = 3) -> None:
        self.data_dir = Path(data_dir or default_data_dir()).resolve()
        layout_file = self.data_dir / "cluster.json"
        if layout_file.exists():
            layout = json.loads(layout_file.read_text())
        else:
            if nodes < 1:
                raise BrokerError("a cluster needs at least one node")
            layout = {
                "cluster_id": _kafka_uuid(),
                "ports": [[free_port(), free_port()] for _ in range(nodes)],
            }
            self.data_dir.mkdir(parents=True, exist_ok=True)
            layout_file.write_text(json.dumps(layout))
        voters = ",".join(
            f"{i + 1}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(layout["ports"])
        )
        self.nodes = [
            ClusterNode(
                self.data_dir / f"node-{i + 1}",
                i + 1,
                (port, controller),
                voters,
                layout["cluster_id"],
            )
            for i, (port, controller) in enumerate(layout["ports"])
        ]

    @staticmethod
    def exists(data_dir: Path | None = None) -> bool:
        return (Path(data_dir or default_data_dir()) / "cluster.json").exists()

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.ports[0]}" for node in self.nodes)

    def start(self, timeout_s: float = 180.0) -> str:
        """Start every node not running (all at once: a controller quorum needs a majority to
        answer), wait until each answers with every node in its metadata; bootstrap.servers.
        After :meth:`kill`, this restarts the killed nodes on their data dirs and ports."""
        launched = [(n, *n._launch()) for n in self.nodes if n.status() is None]
        try:
            for node, process, bootstrap in launched:
                node._wait_until_ready(process, bootstrap, timeout_s, brokers=len(self.nodes))
        except BrokerError:
            self.stop()
            raise
        return self.bootstrap_servers

    def status(self) -> list[BrokerStatus | None]:
        return [node.status() for node in self.nodes]

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (ids from 1)."""
        self.nodes[node_id - 1].kill()

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop every node this data dir started, all at once; False if none was running.

        One by one, the last node's controlled shutdown waited out ``timeout_s`` for a
        controller quorum that had already gone, and was then killed anyway: measured on a
        three-node cluster with one topic, 3.6 + 5.0 + 15.3 s, against 7.7 s all at once."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return any(list(pool.map(lambda node: node.stop(timeout_s), self.nodes)))


def resolve_bootstrap_servers(explicit: str | None = None) -> str:
    """Where to reach Kafka: the flag, ``LOANREC_BOOTSTRAP_SERVERS``, or the local broker."""
    if explicit:
        return explicit
    from_env = os.environ.get("LOANREC_BOOTSTRAP_SERVERS")
    if from_env:
        return from_env
    if LocalCluster.exists():
        cluster = LocalCluster()
        if any(cluster.status()):
            return cluster.bootstrap_servers
    running = LocalBroker().status()
    if running:
        return running.bootstrap_servers
    raise BrokerError(
        "no Kafka broker: pass --bootstrap-servers HOST:PORT, set LOANREC_BOOTSTRAP_SERVERS, "
        "or start a local one with `loan-recovery broker start`"
    )
