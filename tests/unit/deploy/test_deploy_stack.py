"""The operators' stack as files: docker-compose.yml, Dockerfile, Prometheus and Grafana config.

No Docker engine is needed: compose is validated by ``docker-compose config``, Prometheus files
by ``promtool``, and every ``loan-recovery`` invocation in compose against the real CLI's help.
(``test_deploy_metrics.py`` checks the metric names against a live scorer.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "loan-recovery.json"
OWN_IMAGE = "loan-recovery"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make setup` (scripts/install-system-deps.sh)"
    return path


@cache
def compose() -> dict:
    # The resolved model (anchors merged, defaults filled) exactly as compose sees it.
    out = subprocess.run(
        [_tool("docker-compose"), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return yaml.safe_load(out.stdout)


@cache
def cli_help(*subcommand: str) -> str:
    # Wide terminal: rich would otherwise truncate long option names in the help table.
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    cli = [sys.executable, "-m", "loan_recovery.cli", *subcommand, "--help"]
    out = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert out.returncode == 0, f"`loan-recovery {' '.join(subcommand)} --help` failed: {out}"
    return out.stdout


def test_compose_file_validates() -> None:
    result = subprocess.run(
        [_tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_image_is_pinned() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"service {name} has no image"
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
    images = {s["image"].rsplit(":", 1)[0] for s in services.values()}
    assert {"apache/kafka", "prom/prometheus", "grafana/grafana", OWN_IMAGE} <= images
    assert services["kafka"]["image"] == "apache/kafka:4.1.0"
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base and re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", base.group(1)), base


def test_stack_has_every_role() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "topics-init",
        "trainer",
        "scorer",
        "producer",
        "prometheus",
        "grafana",
    } <= set(services)
    scorer = services["scorer"]
    assert scorer["build"]["dockerfile"] == "Dockerfile"
    assert "healthz" in " ".join(scorer["healthcheck"]["test"])
    assert scorer["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"
    assert scorer["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["producer"]["depends_on"]["scorer"]["condition"] == "service_healthy"
    produced = [argv[:3] for argv in _invocations(services["producer"])]
    assert ["produce", "--source", "events"] in produced  # the trainer's book, once
    assert ["produce", "--source", "synthetic"] in produced  # then live
    trainer = " ".join(services["trainer"]["command"])
    assert "loan-recovery generate" in trainer and "loan-recovery train" in trainer
    model_dir = scorer["command"][scorer["command"].index("--model") + 1]
    assert f"--out {model_dir}" in trainer  # the scorer loads what the trainer wrote


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*", text, re.M | re.S) and "/healthz" in text
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):  # everything it copies exists
        *sources, _ = line.split()
        if sources[0].startswith("--from="):
            continue  # from an earlier build stage, not from the repository
        for path in sources:
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"schemas", "models", "producer", "consumer", "loan_recovery"} & set(ignored)


def _invocations(service: dict) -> list[list[str]]:
    """Every `loan-recovery ...` argv a service runs (direct, or inside `sh -c`)."""
    entrypoint, command = service.get("entrypoint") or [], service.get("command") or []
    if entrypoint[:2] == ["sh", "-c"]:
        script = " ".join(command)
        words = [shlex.split(p) for p in re.split(r"&&|\|\||;|\(|\)", script)]
        words = [w[1:] if w[:1] == ["exec"] else w for w in words]
        return [w[1:] for w in words if w[:1] == ["loan-recovery"]]
    return [command]  # the image's ENTRYPOINT is loan-recovery


def _subcommand(argv: list[str]) -> tuple[str, ...]:
    words = [w for w in argv[:2] if not w.startswith("-")]
    groups = {"broker", "topics"}  # command groups: the second word is the command
    return tuple(words[:2]) if words and words[0] in groups else tuple(words[:1])


def test_every_cli_invocation_in_compose_uses_real_flags() -> None:
    checked = 0
    for name, service in compose()["services"].items():
        if not service["image"].startswith(OWN_IMAGE + ":"):
            continue
        for argv in _invocations(service):
            sub = _subcommand(argv)
            help_text = cli_help(*sub)
            for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                    f"service {name}: `loan-recovery {' '.join(sub)}` has no option {flag}"
                )
            checked += 1
    assert checked >= 6  # topics-init, trainer (generate, train), scorer, producer (2)


def test_scorer_command_ports_and_env_match_serve() -> None:
    scorer = compose()["services"]["scorer"]
    help_text = cli_help("serve")
    command = scorer["command"]
    assert command[0] == "serve"
    for variable in scorer["environment"]:
        assert variable in help_text, f"scorer env {variable} is not read by `serve`"
    port = command[command.index("--metrics-port") + 1]
    published = {str(p["target"]) for p in scorer["ports"]}
    assert port in published, f"--metrics-port {port} is not published ({published})"
    assert f"127.0.0.1:{port}/healthz" in " ".join(scorer["healthcheck"]["test"])
    # serve binds 127.0.0.1 by default (/loans carries personal data); Prometheus scrapes
    # from another container, so compose must open it.
    assert command[command.index("--http-host") + 1] == "0.0.0.0"
    model = command[command.index("--model") + 1]
    assert model.startswith("/data/"), "the bundle lives on the shared /data volume"
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert f"scorer:{port}" in targets


def test_promtool_checks_rules_config_and_alert_unit_tests() -> None:
    promtool = _tool("promtool")
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_grafana_provisioning_matches_dashboard_and_mounts() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/loan-recovery.yml").read_text())
    dashboard_dir = providers["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert (str(GRAFANA / "dashboards"), dashboard_dir) in map(_mount, mounts)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in (
        "events per second",
        "latency",
        "lag",
        "strategy",
        "alerts",
        "dead-lettered",
        "segment",
        "tier",
        "transactions",
        "model version",
    ):
        assert topic in titles, f"the dashboard has no {topic} panel"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _mount(volume: str | dict) -> tuple[str, str]:
    """(source, target) of a volume in either compose syntax (docker-compose 1.x prints the
    short ``source:target:mode`` form, Compose v2 the long form)."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"]
    source, target = volume.split(":")[:2]
    return source, target


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(ROOT) for p in (ROOT / "deploy").rglob("*") if p.suffix in (".yml", ".yaml")
    ),
)
def test_deploy_yaml_parses(path: Path) -> None:
    assert yaml.safe_load((ROOT / path).read_text())


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, written as a recording rule (Grafana's
    ``$__rate_interval`` replaced by a duration, as Grafana does before sending it)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        t["expr"].replace("$__rate_interval", "1m")
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", "dashboard_rules.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_prometheus_container_sees_its_config_and_rules() -> None:
    service = compose()["services"]["prometheus"]
    mounts = dict(map(_mount, service["volumes"]))
    config_arg = next(a for a in service["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert mounts[str(PROMETHEUS / "prometheus.yml")] == config_path
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to the config file's directory
        in_container = str(Path(config_path).parent / rule_file)
        assert mounts[str(PROMETHEUS / rule_file)] == in_container, rule_file
