"""A local Apache Kafka broker (KRaft, one combined broker+controller node) for dev and tests.

The jars come from Maven Central (``scripts/fetch-kafka.sh``) into a cache directory; each data
directory holds one independent broker with its own config, logs, pid and port, so tests and the
demo can run side by side.

Example (needs Java 17 and the fetched jars)::

    broker = LocalBroker(Path("/tmp/kafka-demo"))
    bootstrap = broker.start()      # waits until the broker answers metadata requests
    ...
    broker.stop()
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import LoanRecoveryError

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
HEAP_OPTS = "-Xms256m -Xmx512m"


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


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    # Replication factors and min ISR of 1 so that transactions work on a single broker;
    # few internal partitions so that a fresh broker is ready in seconds.
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft-logs"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
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

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir or default_data_dir()).resolve()

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
        classpath = kafka_classpath()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port, controller_port = free_port(), free_port()
        self._properties.write_text(_server_properties(self.data_dir, port, controller_port))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.data_dir / "server.log"))
        java = [
            "java",
            *HEAP_OPTS.split(),
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
        ]
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
        bootstrap = f"127.0.0.1:{port}"
        try:
            self._wait_until_ready(process, bootstrap, timeout_s)
        except BrokerError:
            self.stop()
            raise
        return BrokerStatus(process.pid, bootstrap, self.data_dir)

    def _format(self, java: list[str]) -> None:
        result = subprocess.run(
            [
                *java,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _kafka_uuid(),
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
        self, process: subprocess.Popen, bootstrap: str, timeout_s: float
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
                if metadata.brokers:
                    return
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


def resolve_bootstrap_servers(explicit: str | None = None) -> str:
    """Where to reach Kafka: the flag, ``LOANREC_BOOTSTRAP_SERVERS``, or the local broker."""
    if explicit:
        return explicit
    from_env = os.environ.get("LOANREC_BOOTSTRAP_SERVERS")
    if from_env:
        return from_env
    running = LocalBroker().status()
    if running:
        return running.bootstrap_servers
    raise BrokerError(
        "no Kafka broker: pass --bootstrap-servers HOST:PORT, set LOANREC_BOOTSTRAP_SERVERS, "
        "or start a local one with `loan-recovery broker start`"
    )
