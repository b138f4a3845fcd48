"""The local three-node cluster's layout and configuration, without starting a JVM (the
integration test tests/integration/test_stream_outage.py runs it)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from loan_recovery.broker import LocalCluster
from loan_recovery.cli import app


def _properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_three_nodes_replicate_everything_three_times_with_min_isr_two(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", nodes=3)
    ports = [port for node in cluster.nodes for port in node.ports]
    assert len(set(ports)) == 6  # each node its own client and controller port
    configs = []
    for node in cluster.nodes:
        node.data_dir.mkdir(parents=True)
        node._configure()
        configs.append(_properties(node.data_dir / "server.properties"))
    voters = {c["controller.quorum.voters"] for c in configs}
    assert len(voters) == 1 and voters.pop().count("@127.0.0.1:") == 3
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert len({c["log.dirs"] for c in configs}) == 3
    for config in configs:
        assert config["default.replication.factor"] == "3"
        assert config["min.insync.replicas"] == "2"
        assert config["offsets.topic.replication.factor"] == "3"
        assert config["transaction.state.log.replication.factor"] == "3"
        assert config["transaction.state.log.min.isr"] == "2"
    again = LocalCluster(tmp_path / "c")  # another process finds the same nodes
    assert again.bootstrap_servers == cluster.bootstrap_servers
    assert again.bootstrap_servers.count(",") == 2
    assert {n._cluster_id() for n in again.nodes} == {cluster.nodes[0]._cluster_id()}
    assert again.status() == [None, None, None] and again.stop() is False


def test_broker_status_reports_each_node_of_a_stopped_cluster(tmp_path: Path) -> None:
    LocalCluster(tmp_path / "c", nodes=3)
    result = CliRunner().invoke(app, ["broker", "status", "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.startswith("node")] == [
        "node 1: down",
        "node 2: down",
        "node 3: down",
    ]


def test_brokers_run_with_kafkas_own_gc_settings_and_log_their_pauses(tmp_path: Path) -> None:
    """As Kafka's bin/kafka-run-class.sh runs them (G1 aiming at 20 ms pauses, not the JVM's
    200 ms default), with a GC log whose pauses `make bench` reports."""
    node = LocalCluster(tmp_path / "c", nodes=3).nodes[0]
    command = node.java_command("kafka.jar", tmp_path / "log4j2.properties")
    assert {"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"} <= set(command)
    (log,) = [arg for arg in command if arg.startswith("-Xlog:gc:file=")]
    assert log.split("=", 1)[1].startswith(str(node.data_dir / "gc.log") + ":")
    node.data_dir.mkdir(parents=True)
    (node.data_dir / "gc.log").write_text(  # two lines as JDK 17 writes them, and a non-pause
        "[2026-12-02T02:20:17.317+0000][0.020s] Using G1\n"
        "[2026-12-02T02:20:19.101+0000][1.804s] GC(0) Pause Young (Normal) (G1 Evacuation "
        "Pause) 23M->4M(256M) 7.514ms\n"
        "[2026-12-02T02:20:25.400+0000][8.103s] GC(1) Pause Remark 40M->40M(256M) 1.250ms\n"
    )
    (node.data_dir / "gc.log.0").write_text("[9.0s] GC(2) Pause Young (Mixed) 9M->2M(256M) 12ms\n")
    assert sorted(node.gc_pauses_ms()) == [1.25, 7.514, 12.0]
