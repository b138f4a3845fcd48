"""What the Grafana dashboard and the alert rules query, for the offline dashboard test
(tests/unit/deploy) and the live-scorer test (tests/integration/test_deploy_metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
