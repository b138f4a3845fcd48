"""The Grafana dashboard queries only metrics of the contract, and the PromQL name extraction
that the live-scorer test (tests/integration/test_deploy_metrics.py) relies on is right."""

from __future__ import annotations

import re

from deploy_contract import PROMETHEUS_BUILTINS, ROOT, dashboard_queries, promql_metric_names


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
