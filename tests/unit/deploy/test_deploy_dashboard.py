"""The Grafana dashboard queries only metrics of the contract, and the PromQL name extraction
that the live-scorer test (tests/integration/test_deploy_metrics.py) relies on is right."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "loan-recovery.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus itself creates (scrape health, alert state): not the scorer's to export.
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE"}
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords, numbers).

    >>> sorted(promql_metric_names('histogram_quantile(0.99, sum by (le) '
    ...     '(rate(a_seconds_bucket{x="y"}[5m]))) / on (job) b_total > 1e-9 or vector(0)'))
    ['a_seconds_bucket', 'b_total']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        name, rest = match.group(), text[match.end() :]
        if re.match(r"\s*\(", rest) or name.lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(name)
    return names


def dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    panels += [n for p in dashboard["panels"] for n in p.get("panels", [])]  # collapsed rows
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}


def test_promql_name_extraction_on_the_dashboard_itself() -> None:
    queries = [q for qs in dashboard_queries().values() for q in qs]
    used = set().union(*map(promql_metric_names, queries))
    assert "loanrec_event_latency_seconds_bucket" in used
    assert "loanrec_batch_size_sum" in used and "loanrec_batch_size_count" in used
    assert not used & {"le", "rate", "sum", "histogram_quantile", "version", "partition"}
    assert all(n.startswith("loanrec_") for n in used - PROMETHEUS_BUILTINS), used


def test_dashboard_covers_every_metric_of_the_contract() -> None:
    table = (ROOT / "docs" / "INTERNALS.md").read_text().split("## Metric names", 1)[1]
    contract = set(re.findall(r"^\| `(loanrec_\w+)` \|", table, re.M))
    assert len(contract) >= 15
    used = {n for qs in dashboard_queries().values() for q in qs for n in promql_metric_names(q)}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert not contract - base, f"metrics without a panel: {sorted(contract - base)}"
