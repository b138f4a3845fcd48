"""`produce --kafka-config` against a broker that requires SASL: the properties file really is
passed through to librdkafka (the README's "existing Kafka" path), and a wrong password is one
clear line, not a hang.

The broker is the same Apache Kafka 4.x as the session fixture's, started from the same jars with
a SASL_PLAINTEXT client listener (SASL/PLAIN over TCP; SASL_SSL differs only by TLS settings in
the same file), and stopped when the module ends.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from test_producer_cli import run_cli

from loan_recovery.broker import free_port, kafka_classpath

USER, PASSWORD = "loanrec", "s3cret-for-tests"


def _broker_properties(
    data_dir: Path, sasl_port: int, internal_port: int, controller_port: int
) -> str:
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="admin" user_admin="admin" user_{USER}="{PASSWORD}";'
    )
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"SASL://127.0.0.1:{sasl_port},INTERNAL://127.0.0.1:{internal_port},"
        f"CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL://127.0.0.1:{sasl_port},"
        f"INTERNAL://127.0.0.1:{internal_port}",
        "listener.security.protocol.map": "SASL:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "INTERNAL",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl.plain.sasl.jaas.config": jaas,
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _client(port: int, password: str = PASSWORD) -> dict[str, str]:
    return {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": USER,
        "sasl.password": password,
    }


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[int]:
    data_dir = Path(tempfile.mkdtemp(prefix="loanrec-sasl-broker-"))
    sasl_port, internal_port, controller_port = free_port(), free_port(), free_port()
    properties = data_dir / "server.properties"
    properties.write_text(_broker_properties(data_dir, sasl_port, internal_port, controller_port))
    java = [
        "java",
        "-Xms128m",
        "-Xmx384m",
        "-cp",
        kafka_classpath(),
        f"-Dkafka.logs.dir={data_dir}",
    ]
    cluster_id = "-"
    while cluster_id.startswith("-"):  # StorageTool would read a leading '-' as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    formatted = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
        capture_output=True,
        text=True,
    )
    if formatted.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"formatting the SASL broker failed: {formatted.stderr[-2000:]}")
    with open(data_dir / "broker.out", "wb") as out:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(properties)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        admin = AdminClient({**_client(sasl_port), "log_level": 0})
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (data_dir / "broker.out").read_text()[-3000:]
            try:
                if admin.list_topics(timeout=2).brokers:
                    break
            except Exception:
                assert time.monotonic() < deadline, "the SASL broker did not start in 90 s"
                time.sleep(0.5)
        yield sasl_port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_properties_file_authenticates_with_sasl(sasl_broker: int, tmp_path: Path) -> None:
    from models.data.adapters import write_jsonl
    from models.data.synthetic import generate_book

    topic = f"sasl-events-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(_client(sasl_broker))
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(timeout=30)
    _, events, _ = generate_book(100, seed=9)
    log = tmp_path / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    props = tmp_path / "client.properties"
    props.write_text(
        "# as a bank's platform team would hand it out\n"
        + "".join(f"{key}={value}\n" for key, value in _client(sasl_broker).items())
    )

    result = run_cli(
        "produce",
        "--kafka-config",
        str(props),
        "--source",
        "events",
        "--input",
        str(log),
        "--topic",
        topic,
        "--json",
        env={"LOANREC_BOOTSTRAP_SERVERS": ""},
    )  # the file names the servers
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["acknowledged"] == len(events)
    assert topic_count_sasl(sasl_broker, topic) == len(events)


def topic_count_sasl(port: int, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**_client(port), "group.id": "count"})
    try:
        return sum(
            hi - lo
            for lo, hi in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(3)
            )
        )
    finally:
        consumer.close()


def test_wrong_password_is_one_clear_line(sasl_broker: int, tmp_path: Path) -> None:
    props = tmp_path / "client.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in _client(sasl_broker, "wrong").items()))
    started = time.monotonic()
    result = run_cli(
        "produce",
        "--kafka-config",
        str(props),
        "--source",
        "events",
        "--input",
        "x",
        env={"LOANREC_BOOTSTRAP_SERVERS": ""},
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: Kafka at 127.0.0.1:{sasl_broker} refused us: "), line
    assert "Authentication failed" in line and line.endswith(f"check --kafka-config {props}")
    assert time.monotonic() - started < 10  # no waiting out the metadata timeout
