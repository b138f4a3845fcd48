"""The analysts' report: one self-contained interactive HTML file (plotly.js embedded, no
network needed) built from a bundle's metadata and ``report_data.json``.

Sections (each a ``<section id=...>``, see :data:`SECTIONS`): summary, segment map (2-D PCA
projection coloured by segment), segment profiles, clustering comparison, ROC / PR curves,
calibration, feature importance, score distribution with the tier thresholds, strategy mix,
strategy outcomes (recovery and cost by collection method x segment with 95% intervals, from
:mod:`models.strategy.outcome_table`; shown when the report is given an input book), learned
policy (its strategy mix against the table's and its value estimates with intervals, from the
JSON of ``loan-recovery evaluate --json``), guardrail interventions (per rule, the decisions it
changed and, per what the policy wanted and what was sent, the emitted changes it shaped, from
:mod:`models.report.guardrails`; shown when the report is given an input book).

>>> SECTIONS[:3]
('summary', 'segment-map', 'segment-profiles')
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from models.report.guardrails import GuardrailSummary
from models.serving.bundle import ModelBundle
from models.training.population import load_report_data

SECTIONS = (
    "summary",
    "segment-map",
    "segment-profiles",
    "clustering-comparison",
    "roc-pr",
    "calibration",
    "feature-importance",
    "score-distribution",
    "strategy-mix",
    "strategy-outcomes",
    "strategy-policy",
    "guardrails",
)
COLORS = {"HIGH_RISK": "#d62728", "OTHERS": "#ff7f0e", "LOW_RISK": "#2ca02c"}
TITLES = {
    "summary": "Summary",
    "segment-map": "Segment map",
    "segment-profiles": "Segment profiles",
    "clustering-comparison": "Clustering comparison",
    "roc-pr": "ROC and precision-recall curves",
    "calibration": "Calibration",
    "feature-importance": "Permutation feature importance",
    "score-distribution": "Score distribution and tier thresholds",
    "strategy-mix": "Strategy mix",
    "strategy-outcomes": "Recovery and cost by strategy and segment",
    "strategy-policy": "Learned policy against the table",
    "guardrails": "Guardrail interventions",
}


def _figures(
    bundle: ModelBundle,
    data: dict[str, Any],
    outcomes: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    guardrails: GuardrailSummary | None = None,
) -> dict[str, list[Any]]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    meta = bundle.metadata
    metrics = meta["metrics"]
    layout = {"template": "plotly_white", "height": 460, "margin": {"t": 50, "l": 60, "r": 20}}
    figs: dict[str, list[Any]] = {name: [] for name in SECTIONS}

    proj = data["projection"]
    fig = go.Figure()
    for segment in ("HIGH_RISK", "OTHERS", "LOW_RISK"):
        idx = [i for i, s in enumerate(proj["segment"]) if s == segment]
        fig.add_trace(
            go.Scatter(
                x=[proj["x"][i] for i in idx],
                y=[proj["y"][i] for i in idx],
                mode="markers",
                name=segment,
                marker={"color": COLORS[segment], "size": 5, "opacity": 0.6},
                text=[f"risk {proj['risk'][i]:.3f}" for i in idx],
                hoverinfo="text+name",
            )
        )
    ev = proj["explained_variance"]
    fig.update_layout(
        title="Loans on the first two principal components (K-Means segments); "
        "zoom out for the outliers",
        xaxis_title=f"PC1 ({ev[0]:.0%} of variance)",
        yaxis_title=f"PC2 ({ev[1]:.0%} of variance)",
        xaxis_range=_core_range(proj["x"]),
        yaxis_range=_core_range(proj["y"]),
        **layout,
    )
    figs["segment-map"].append(fig)

    profiles = data["profiles"]
    names = [s for s in ("HIGH_RISK", "OTHERS", "LOW_RISK") if s in profiles]
    features = list(next(iter(profiles.values()))["features"]) if profiles else []
    seg = meta["segmenter"]
    fig = go.Figure()
    for s in names:
        # Standardized means, so features of different units share one axis.
        z = [
            ((profiles[s]["features"][f] or 0.0) - seg["means"][k]) / seg["stds"][k]
            for k, f in enumerate(features)
        ]
        rate = profiles[s]["default_rate"]
        label = f"{s} ({profiles[s]['count']:,} loans, mean risk {profiles[s]['mean_risk']:.2f}"
        label += f", default rate {rate:.1%})" if rate is not None else ")"
        fig.add_trace(go.Bar(x=features, y=z, name=label, marker_color=COLORS[s]))
    fig.update_layout(
        title="Mean of each segmentation feature per segment (standardized)",
        barmode="group",
        yaxis_title="standard deviations from the mean",
        **layout,
    )
    figs["segment-profiles"].append(fig)

    algos = metrics["clustering"]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=[f"{n} (silhouette {_f(a['silhouette'])})" for n, a in algos.items()],
    )
    comp = data["comparison_sample"]
    for col, (name, a) in enumerate(algos.items(), start=1):
        labels = comp["labels"][name]
        clusters = sorted(set(labels) - {-1})
        names_of = dict(zip(clusters, a["names"], strict=False))
        for c in [*clusters, -1]:
            idx = [i for i, lab in enumerate(labels) if lab == c]
            if not idx:
                continue
            label = names_of.get(c, "noise") if c != -1 else "noise"
            fig.add_trace(
                go.Scatter(
                    x=[comp["x"][i] for i in idx],
                    y=[comp["y"][i] for i in idx],
                    mode="markers",
                    name=f"{name}: {label}",
                    showlegend=False,
                    marker={"size": 4, "opacity": 0.6, "color": COLORS.get(label, "#7f7f7f")},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(range=_core_range(comp["x"]))
    fig.update_yaxes(range=_core_range(comp["y"]))
    fig.update_layout(
        title="Clusterings of the same subsample (PCA projection; zoom out for the outliers)",
        **layout,
    )
    figs["clustering-comparison"].append(fig)

    if curves := data.get("curves"):
        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=[
                f"ROC (AUC {_f(metrics.get('roc_auc'))})",
                f"Precision-recall (AP {_f(metrics.get('pr_auc'))})",
            ],
        )
        fig.add_trace(
            go.Scatter(x=curves["roc"]["fpr"], y=curves["roc"]["tpr"], name="ROC"), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(x=[0, 1], y=[0, 1], name="chance", line={"dash": "dot", "color": "grey"}),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=curves["pr"]["recall"], y=curves["pr"]["precision"], name="precision-recall"
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="false positive rate", row=1, col=1)
        fig.update_yaxes(title_text="true positive rate", row=1, col=1)
        fig.update_xaxes(title_text="recall", row=1, col=2)
        fig.update_yaxes(title_text="precision", row=1, col=2)
        fig.update_layout(title="Holdout curves", **layout)
        figs["roc-pr"].append(fig)
        table = [
            b
            for b in metrics.get("calibration") or meta["calibration"]["table"] or []
            if b["count"]
        ]
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(
                x=[b["mean_predicted"] for b in table],
                y=[b["observed_rate"] for b in table],
                mode="lines+markers",
                name="model",
                text=[f"{b['count']} loans" for b in table],
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                name="perfectly calibrated",
                line={"dash": "dot", "color": "grey"},
            )
        )
        fig.update_layout(
            title=f"Reliability (Brier {_f(metrics.get('brier'))})",
            xaxis_title="mean predicted P(default)",
            yaxis_title="observed default rate",
            **layout,
        )
        figs["calibration"].append(fig)

    if imp := metrics.get("permutation_importance"):
        top = imp[:20][::-1]
        fig = go.Figure(
            go.Bar(
                x=[r["mean"] for r in top],
                y=[r["feature"] for r in top],
                orientation="h",
                error_x={"type": "data", "array": [r["std"] for r in top]},
            )
        )
        fig.update_layout(
            title="Drop in holdout ROC AUC when the feature is shuffled",
            xaxis_title="ROC AUC drop",
            **{**layout, "height": 600},
        )
        figs["feature-importance"].append(fig)

    scores = data.get("all_scores") or []
    th = meta["thresholds"]
    fig = go.Figure(go.Histogram(x=scores, nbinsx=50, name="loans"))
    for name, value in (("MODERATE", th["moderate"]), ("HIGH", th["high"])):
        fig.add_vline(
            x=value, line_dash="dash", line_color="black", annotation_text=f"{name} > {value}"
        )
    fig.update_layout(
        title="Calibrated P(default) of every training loan",
        xaxis_title="score",
        yaxis_title="loans",
        **layout,
    )
    figs["score-distribution"].append(fig)

    mix = data.get("strategy_mix") or metrics.get("strategy_mix", {})
    fig = go.Figure(go.Bar(x=list(mix), y=list(mix.values())))
    fig.update_layout(
        title="Strategy per loan under the default policy (tier x segment)",
        yaxis_title="loans",
        **layout,
    )
    figs["strategy-mix"].append(fig)

    if outcomes:
        figs["strategy-outcomes"].append(_outcome_figure(outcomes, layout))
    if evaluation and evaluation.get("strategy_mix"):
        fig = go.Figure()
        for name, shares in evaluation["strategy_mix"].items():
            fig.add_trace(go.Bar(x=list(shares), y=list(shares.values()), name=name))
        fig.update_layout(
            title="Share of the logged decisions per strategy: learned policy vs table",
            yaxis_title="share of decisions",
            barmode="group",
            **layout,
        )
        figs["strategy-policy"].append(fig)
    if guardrails and guardrails.decisions_by_rule:
        rules = list(guardrails.decisions_by_rule)
        emitted = {rule: 0 for rule in rules}
        for (rule, _, _), n in guardrails.emitted.items():
            emitted[rule] = emitted.get(rule, 0) + n
        fig = go.Figure()
        fig.add_trace(
            go.Bar(x=rules, y=[guardrails.decisions_by_rule[r] for r in rules], name="decisions")
        )
        fig.add_trace(go.Bar(x=rules, y=[emitted[r] for r in rules], name="emitted changes"))
        fig.update_layout(
            title="Decisions each guardrail changed, and the emitted changes among them",
            yaxis_title="decisions",
            barmode="group",
            **layout,
        )
        figs["guardrails"].append(fig)
    return figs


def _guardrails_html(summary: GuardrailSummary) -> str:
    """Per rule the decisions it changed; per (rule, wanted, sent) the emitted changes."""
    if not summary.decisions_by_rule:
        return (
            f"<p>No guardrail changed any of the {summary.events:,} decisions of this book "
            "(no holds, no legal action on time-barred debt or below the minimum days past due, "
            "no drop faster than the escalation ladder).</p>"
        )
    by_rule = [[rule, f"{n:,}"] for rule, n in summary.decisions_by_rule.items()]
    emitted = [[r, wanted, sent, f"{n:,}"] for (r, wanted, sent), n in summary.emitted.items()]
    return (
        f"<p>The book's {summary.events:,} events replayed through the scorer (every policy "
        'choice passes through the guardrail layer, docs/SERVING.md "Guardrails"); '
        f"{summary.changes:,} strategy changes emitted. A decision counts once per rule that "
        "changed it, emitted or not (as <code>loanrec_guardrail_interventions_total</code>); a "
        "loan already on HOLD emits nothing at its next events.</p>"
        + _table(["rule", "decisions changed"], by_rule)
        + "<h3>What the policy wanted and what was sent (emitted changes)</h3>"
        + _table(["rule", "policy wanted", "sent", "changes"], emitted)
    )


def _evaluation_html(evaluation: dict[str, Any]) -> str:
    """The learned policy's value estimates per loan with their 95% bootstrap intervals."""
    names = {
        "ips": "inverse propensity (IPS)",
        "snips": "self-normalised IPS",
        "dr": "doubly robust",
        "dm": "direct method (model)",
    }
    estimates = evaluation.get("estimates", {})
    rows = [
        [names[k], f"{e['value']:,.2f}", f"[{e['low']:,.2f}, {e['high']:,.2f}]"]
        for k, e in estimates.items()
        if k in names
    ]
    note = estimates.get("note") or evaluation.get("warning")
    return (
        f"<p>From a decision log of {int(evaluation.get('decisions', 0)):,} decisions "
        f"(propensities {html.escape(str(evaluation.get('propensities', '?')))}); the logging "
        f"policy realised {evaluation.get('logged_policy_net_per_decision', float('nan')):,.2f} "
        "net per decision. Intervals: 95% bootstrap percentile, resampling loans.</p>"
        + (f"<p class='note'>{html.escape(str(note))}</p>" if note else "")
        + _table(["estimator", "net recovery / loan", "95% interval"], rows)
    )


def _outcome_figure(table: list[dict[str, Any]], layout: dict[str, Any]) -> Any:
    """Recovered fraction by strategy, one bar group per segment, 95% interval whiskers."""
    import plotly.graph_objects as go

    strategies = sorted({c["strategy"] for c in table})
    fig = go.Figure()
    for segment in sorted({c["segment"] for c in table}):
        cells = {c["strategy"]: c for c in table if c["segment"] == segment}
        means = [cells[s]["recovered_fraction"] if s in cells else None for s in strategies]
        plus = [
            cells[s]["recovered_fraction_ci"][1] - cells[s]["recovered_fraction"]
            if s in cells and cells[s]["loans"] > 1
            else 0.0
            for s in strategies
        ]
        fig.add_trace(
            go.Bar(
                x=strategies,
                y=means,
                name=segment,
                marker={"color": COLORS.get(segment, "#7f7f7f")},
                error_y={"type": "data", "array": plus},
            )
        )
    fig.update_layout(
        title="Recovered fraction of the balance by collection method (observational, 95% "
        "normal intervals)",
        yaxis_title="recovered / balance",
        barmode="group",
        **layout,
    )
    return fig


def _outcomes_html(table: list[dict[str, Any]]) -> str:
    """The observational note and the method x segment table with intervals."""
    from models.strategy.outcome_table import OBSERVATIONAL_NOTE

    def ci(cell: dict[str, Any], name: str, fmt: str) -> str:
        low, high = cell[f"{name}_ci"]
        interval = "" if low != low else f" [{low:{fmt}}, {high:{fmt}}]"
        return f"{cell[name]:{fmt}}{interval}"

    rows = [
        [
            c["strategy"],
            c["segment"],
            str(c["loans"]),
            ci(c, "recovered_fraction", ".3f"),
            ci(c, "cost", ",.1f"),
            ci(c, "net", ",.0f"),
        ]
        for c in table
    ]
    head = ["strategy", "segment", "loans", "recovered / balance", "cost / loan", "net / loan"]
    return f"<p class='observational'>{html.escape(OBSERVATIONAL_NOTE)}</p>" + _table(head, rows)


def _core_range(values: list[float]) -> list[float] | None:
    """The 1st-99th percentile range, padded: a few extreme loans must not squash the map."""
    if not values:
        return None
    lo, hi = np.percentile(values, [1, 99])
    pad = (hi - lo) * 0.1 or 1.0
    return [float(lo - pad), float(hi + pad)]


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary_html(bundle: ModelBundle) -> str:
    meta = bundle.metadata
    m = meta["metrics"]
    rows = [
        ("model version", bundle.version),
        ("trained at", meta["trained_at"]),
        ("source", meta["source"]),
        ("loans (train / holdout)", f"{m['n_train']:,} / {m['n_holdout']:,}"),
        ("ROC AUC", _f(m.get("roc_auc"))),
        ("PR AUC", _f(m.get("pr_auc"))),
        ("Brier score", _f(m.get("brier"))),
        ("default rate (holdout)", _f(m.get("base_rate"))),
        (
            "tier thresholds",
            f"HIGH > {meta['thresholds']['high']}, MODERATE > {meta['thresholds']['moderate']}",
        ),
    ]
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    algos = m["clustering"]
    comp = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{a['n_clusters']}</td><td>{_f(a['silhouette'])}</td>"
        f"<td>{_f(a['davies_bouldin'])}</td><td>{_f(a['calinski_harabasz'])}</td></tr>"
        for n, a in algos.items()
    )
    confusion = "".join(
        f"<tr><td>{html.escape(n)} (&gt; {c['threshold']})</td><td>{c['tp']}</td>"
        f"<td>{c['fp']}</td><td>{c['fn']}</td><td>{c['tn']}</td></tr>"
        for n, c in m.get("confusion", {}).items()
    )
    return (
        f"<table>{body}</table>"
        "<h3>Confusion matrix at each tier threshold (holdout)</h3>"
        "<table><tr><th>threshold</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th></tr>"
        f"{confusion}</table>"
        f"{_point_in_time_html(meta)}"
        "<h3>Clustering metrics</h3><table><tr><th>algorithm</th><th>clusters</th>"
        "<th>silhouette ↑</th><th>Davies-Bouldin ↓</th><th>Calinski-Harabasz ↑</th></tr>"
        f"{comp}</table>"
    )


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + cells
        + "</table>"
    )


def _point_in_time_html(meta: dict[str, Any]) -> str:
    """Model inputs, quality by months on book, lead time against 30+ DPD and the fairness
    table (bundles trained before point-in-time training have none of them)."""
    m = meta["metrics"]
    out = ""
    if "model_features" in meta:
        excluded = m.get("excluded_features", {})
        out += (
            f"<h3>Model inputs ({len(meta['model_features'])})</h3><p>"
            + html.escape(", ".join(meta["model_features"]))
            + "</p>"
            + _table(["not an input", "why"], [[n, r] for n, r in excluded.items()])
        )
    if buckets := m.get("by_months_on_book"):
        out += (
            f"<h3>Held-out snapshots by months on book (label: written off within "
            f"{m['horizon_months']} months)</h3>"
        )
        out += _table(
            [
                "months on book",
                "snapshots",
                "ROC AUC",
                "95 % CI",
                "mean score",
                "observed",
                "HIGH precision",
                "HIGH recall",
                "MODERATE precision",
                "MODERATE recall",
            ],
            [
                [
                    b["bucket"],
                    f"{b['snapshots']:,}",
                    _f(b["roc_auc"]),
                    f"{_f(b['roc_auc_ci95'][0])} - {_f(b['roc_auc_ci95'][1])}",
                    _f(b["mean_predicted"]),
                    _f(b["observed_rate"]),
                    _f(b["high"]["precision"]),
                    _f(b["high"]["recall"]),
                    _f(b["moderate"]["precision"]),
                    _f(b["moderate"]["recall"]),
                ]
                for b in buckets
            ],
        )
    if rules := m.get("lead_time"):
        out += "<h3>Flagging before the write-off (held-out loans)</h3>"
        out += _table(
            [
                "rule",
                "loans flagged",
                "precision",
                "recall",
                "lead days median (all written off)",
                "lead days p25",
            ],
            [
                [
                    r["rule"],
                    f"{r['flagged_loans']:,}",
                    _f(r["precision"]),
                    _f(r["recall"]),
                    _f(r["lead_days_median"]),
                    _f(r["lead_days_p25"]),
                ]
                for r in rules
            ],
        )
    for name, rows in (m.get("fairness") or {}).items():
        out += (
            f"<h3>Fairness by {html.escape(name)} (not a model input; adverse-impact "
            "ratio = share not flagged over the reference group's)</h3>"
        )
        out += _table(
            [
                "group",
                "loans",
                "default rate",
                "HIGH flag rate",
                "HIGH AIR",
                "MODERATE+ flag rate",
                "MODERATE+ AIR",
            ],
            [
                [
                    r["group"],
                    f"{r['loans']:,}",
                    _f(r["default_rate"]),
                    _f(r["high_flag_rate"]),
                    _f(r["high_adverse_impact_ratio"]),
                    _f(r["moderate_flag_rate"]),
                    _f(r["moderate_adverse_impact_ratio"]),
                ]
                for r in rows
            ],
        )
    return out


def _profiles_html(profiles: dict[str, Any]) -> str:
    """Per segment: size, mean risk, default rate and the raw mean of each feature."""
    names = [s for s in ("HIGH_RISK", "OTHERS", "LOW_RISK") if s in profiles]
    if not names:
        return ""
    features = list(profiles[names[0]]["features"])
    head = "".join(f"<th>{html.escape(s)}</th>" for s in names)
    rows = [
        ("loans", [f"{profiles[s]['count']:,}" for s in names]),
        ("mean predicted risk", [_f(profiles[s]["mean_risk"]) for s in names]),
        ("observed default rate", [_f(profiles[s]["default_rate"]) for s in names]),
    ]
    rows += [(f, [_f(profiles[s]["features"][f]) for s in names]) for f in features]
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>"
        for label, vals in rows
    )
    return f"<table><tr><th>segment</th>{head}</tr>{body}</table>"


def render_report(
    bundle: ModelBundle,
    population: dict[str, Any] | None = None,
    outcomes: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    guardrails: GuardrailSummary | None = None,
) -> str:
    """The report as one HTML string. ``population`` (from
    :func:`models.training.population.input_data`) replaces the training book in the population
    sections (segment map, profiles, scores, strategy mix); ``outcomes`` (from
    :func:`models.strategy.outcome_table.strategy_segment_table`) fills the strategy-outcomes
    section, ``evaluation`` (the JSON of ``loan-recovery evaluate --json``) the learned-policy
    section, ``guardrails`` (from :func:`models.report.guardrails.guardrail_summary`) the
    guardrail section."""
    import plotly.offline

    data = load_report_data(bundle)
    if population is not None:
        data.update(population)
    figs = _figures(bundle, data, outcomes, evaluation, guardrails)
    parts = []
    for name in SECTIONS:
        inner = _summary_html(bundle) if name == "summary" else ""
        if name == "segment-profiles":
            inner += _profiles_html(data["profiles"])
        if name == "clustering-comparison":
            db = bundle.metadata["metrics"]["clustering"]["dbscan"]
            inner += (
                "<p>K-Means (k=3), DBSCAN (eps at the knee of the k-distance curve) and "
                "agglomerative (ward, 3 clusters) on the standardized segmentation features; "
                "clusters named by their members' mean predicted risk. DBSCAN here: "
                f"eps {db['eps']:.3f}, min_samples {db['min_samples']}, {db['n_clusters']} "
                f"cluster(s), {db['noise']} noise point(s) of the subsample; its scores are "
                "blank when it finds fewer than two clusters.</p>"
            )
        if name == "strategy-outcomes" and outcomes:
            inner += _outcomes_html(outcomes)
        for k, fig in enumerate(figs[name]):
            inner += fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"{name}-plot-{k}",
                config={"displaylogo": False},
            )
        if name == "guardrails" and guardrails:
            inner += _guardrails_html(guardrails)
        if name == "strategy-policy" and evaluation:
            inner += _evaluation_html(evaluation)
        if name == "strategy-policy" and not evaluation:
            inner += (
                "<p class='empty'>Not available: give the report the output of "
                "<code>loan-recovery evaluate --json</code> (<code>--evaluation FILE</code>).</p>"
            )
        elif name == "guardrails" and not guardrails:
            inner += (
                "<p class='empty'>Not available: give the report a book "
                "(<code>--input FILE --source seed|uci|events</code>).</p>"
            )
        elif name == "strategy-outcomes" and not outcomes:
            inner += (
                "<p class='empty'>Not available: give the report a book with outcomes "
                "(<code>--input FILE --source seed|events</code>).</p>"
            )
        elif name not in ("summary", "guardrails") and not figs[name]:
            inner += "<p class='empty'>Not available: the bundle was trained without a holdout.</p>"
        parts.append(f"<section id='{name}'><h2>{TITLES[name]}</h2>{inner}</section>")
    plotly_js = plotly.offline.get_plotlyjs()
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>loan-recovery model report {html.escape(bundle.version)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;"
        "color:#222}table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;"
        "padding:4px 10px;text-align:left}section{margin-bottom:2.5em}</style>"
        f"<script type='text/javascript'>{plotly_js}</script></head><body>"
        f"<h1>Early-warning model and segmentation — {html.escape(bundle.version)}</h1>"
        f"{''.join(parts)}</body></html>"
    )


def write_report(
    bundle: ModelBundle,
    out: str | Path,
    population: dict[str, Any] | None = None,
    outcomes: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    guardrails: GuardrailSummary | None = None,
) -> Path:
    """Render and write the report; returns its path."""
    out = Path(out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        render_report(bundle, population, outcomes, evaluation, guardrails), encoding="utf-8"
    )
    return out
