"""``generate``, ``train`` and ``report``: the offline half (issue 3).

loan-recovery generate --loans 10000 --seed 0 --out book/
loan-recovery train --source seed --input book/loans.csv --out model/ [--holdout 0.3] [--json]
loan-recovery report --model model/ --out report.html
"""

from __future__ import annotations

import hashlib
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from loan_recovery.commands.common import fail, print_json


class HistorySource(StrEnum):
    seed = "seed"
    uci = "uci"
    events = "events"


GENERATE_CHUNK = 5000


class EventFormat(StrEnum):
    jsonl = "jsonl"
    avro = "avro"


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(train)
    app.command()(report)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def generate(
    loans: int = typer.Option(..., min=1, help="Number of loans in the book."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same book."),
    out: Path = typer.Option(..., help="Directory for loans.csv, events.jsonl, outcomes.csv.gz."),
    events_format: EventFormat = typer.Option(
        EventFormat.jsonl, "--format", help="Event log: JSON lines or Avro container."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a synthetic book: seed-schema CSV, its event log and outcomes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from models.data.adapters import EventLogWriter, seed_frame_history, write_outcomes
    from models.data.synthetic import generate_frame

    started = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"--out {out}: cannot create the directory ({error.strerror})")
    frame, _ = generate_frame(loans, seed)
    frame.to_csv(out / "loans.csv", index=False)
    log = out / f"events.{events_format.value}"
    outcomes: dict[str, int] = {}
    columns = (
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "loans",
        "{task.fields[rate]}",
        TimeRemainingColumn(),
    )
    with (
        Progress(*columns, console=_console(), transient=True) as bar,
        EventLogWriter(log) as writer,
    ):
        task = bar.add_task("events", total=loans, rate="")
        # Rows are independent: chunk by chunk gives the same events as generate_book, in
        # bounded memory.
        for start in range(0, loans, GENERATE_CHUNK):
            history = seed_frame_history(frame.iloc[start : start + GENERATE_CHUNK])
            writer.write(history.events)
            outcomes.update(history.outcomes)
            done = min(loans, start + GENERATE_CHUNK)
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:,.0f} loans/s")
    n_events = writer.count
    # .csv.gz, not .csv: the directory holds exactly one seed-schema CSV.
    write_outcomes(outcomes, out / "outcomes.csv.gz")
    seconds = time.perf_counter() - started
    summary = {
        "loans": loans,
        "events": n_events,
        "default_rate": sum(outcomes.values()) / loans,
        "seconds": round(seconds, 2),
        "seed": seed,
        "files": {
            "seed_csv": str(out / "loans.csv"),
            "events": str(log),
            "outcomes": str(out / "outcomes.csv.gz"),
        },
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"{loans:,} loans, {n_events:,} events, default rate "
        f"{summary['default_rate']:.1%} in {seconds:.1f} s -> {out}/"
    )


def train(
    source: HistorySource = typer.Option(..., help="Input kind: seed CSV, UCI CSV or event log."),
    input_path: Path = typer.Option(..., "--input", help="The history file."),
    out: Path = typer.Option(Path("out/model"), help="Bundle directory to write."),
    holdout: float = typer.Option(0.3, min=0.0, max=0.9, help="Share of loans held out."),
    seed: int = typer.Option(0, help="Seed for the split, the forest and the clusterings."),
    outcomes: Path | None = typer.Option(None, help="events: outcomes CSV (default: next to it)."),
    # UCI holdout AUC saturates near 100 trees; every tree costs scoring latency per batch.
    trees: int = typer.Option(150, min=1, help="Trees in the random forest."),
    horizon_months: int = typer.Option(
        12, min=1, help="Label of each snapshot: written off within this many months of it."
    ),
    use_age: bool = typer.Option(
        False,
        "--use-age",
        help="Let the model read the borrower's age (Reg B 1002.6(b)(2) "
        "allows it only if applicants aged 62+ are not scored worse; see the fairness table).",
    ),
    use_treatments: bool = typer.Option(
        False,
        "--use-treatments",
        help="Let the model read the collections system's own "
        "actions (collection attempts, last method, legal action): they follow the risk, so "
        "they leak the label and feed the model its own decisions back.",
    ),
    out_of_time: bool = typer.Option(
        True, help="Also fit on earlier snapshots and test on later ones (a second fit)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Train the calibrated early-warning model on point-in-time snapshots and the
    segmentation; write a bundle. Gender is never a model input."""
    from models.data.adapters import AdapterError, read_history
    from models.training.early_warning import TrainingError, train_bundle

    if not input_path.exists():
        fail(f"--input {input_path}: no such file")
    console = _console()
    if use_age:
        console.print(
            "[bold yellow]warning:[/] --use-age: age is a model input. Under Reg B "
            "(12 CFR 1002.6(b)(2)) age may only be used by a system that does not "
            "score applicants aged 62 or more worse; check the fairness table's "
            "62+ adverse-impact ratio before deploying this bundle."
        )
    if use_treatments:
        console.print(
            "[bold yellow]warning:[/] --use-treatments: collection attempts, method "
            "and legal action are model inputs; they follow the risk assessment "
            "(label leak) and, in the stream, feed the model its own decisions."
        )
    try:
        with console.status("reading the history") as status:
            started = time.perf_counter()
            history = read_history(source.value, input_path, outcomes)

            def progress(message: str) -> None:
                status.update(f"{message} ({time.perf_counter() - started:.0f} s)")

            metrics = train_bundle(
                history,
                out,
                holdout=holdout,
                seed=seed,
                n_estimators=trees,
                horizon_months=horizon_months,
                use_age=use_age,
                use_treatments=use_treatments,
                out_of_time=out_of_time,
                input_sha256=_sha256(input_path),
                progress=progress,
            )
    except AdapterError as error:
        fail(str(error))
    except TrainingError as error:
        fail(f"--input {input_path}: {error}")
    except OSError as error:
        fail(f"--out {out}: cannot write the bundle ({error.strerror})")
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        print_json(metrics)
        return
    _print_metrics(metrics)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_metrics(m: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        "metric",
        "value",
        title=f"holdout metrics ({m['n_holdout']:,} loans, "
        f"{m['n_holdout_snapshots']:,} snapshots, label: written off within "
        f"{m['horizon_months']} months)",
    )
    for key in ("roc_auc", "pr_auc", "brier", "base_rate"):
        table.add_row(key, _fmt(m.get(key)))
    if final := m.get("final_state"):
        table.add_row("roc_auc (final states)", _fmt(final["roc_auc"]))
    if oot := m.get("out_of_time"):
        table.add_row(f"roc_auc out of time (after {oot['cutoff']})", _fmt(oot.get("roc_auc")))
    for name, c in m.get("confusion", {}).items():
        table.add_row(
            f"at {name} ({c['threshold']})", f"tp {c['tp']} fp {c['fp']} fn {c['fn']} tn {c['tn']}"
        )
    console.print(table)
    _print_quality(console, m)
    clusters = Table(
        "algorithm",
        "clusters",
        "silhouette",
        "davies-bouldin",
        "calinski-harabasz",
        title="segmentation (standardized features)",
    )
    for name, a in m["clustering"].items():
        clusters.add_row(
            name,
            str(a["n_clusters"]),
            _fmt(a["silhouette"]),
            _fmt(a["davies_bouldin"]),
            _fmt(a["calinski_harabasz"]),
        )
    console.print(clusters)
    if imp := m.get("permutation_importance"):
        top = Table("feature", "importance (ROC AUC drop)", title="top features")
        for row in imp[:8]:
            top.add_row(row["feature"], f"{row['mean']:.4f} ± {row['std']:.4f}")
        console.print(top)
    if skipped := m.get("skipped_events"):
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(skipped.items()))
        console.print(
            f"events refused by the state machine (skipped, as the stream would): {reasons}"
        )
    console.print(f"bundle {m['bundle']} version {m['version']} in {m['seconds']:.1f} s")


def _print_quality(console: Any, m: dict[str, Any]) -> None:
    """Months-on-book, lead-time and fairness tables of the ``train`` metrics."""
    from rich.table import Table

    if buckets := m.get("by_months_on_book"):
        table = Table(
            "months on book",
            "snapshots",
            "ROC AUC (95 % CI)",
            "mean score",
            "observed",
            "HIGH prec / rec",
            "MODERATE prec / rec",
            title="held-out snapshots by months on book",
        )
        for b in buckets:
            low, high = b["roc_auc_ci95"]
            ci = f" ({_fmt(low)}-{_fmt(high)})" if low is not None else ""
            table.add_row(
                b["bucket"],
                f"{b['snapshots']:,}",
                _fmt(b["roc_auc"]) + ci,
                _fmt(b["mean_predicted"]),
                _fmt(b["observed_rate"]),
                *(
                    f"{_fmt(b[t]['precision'])} / {_fmt(b[t]['recall'])}"
                    for t in ("high", "moderate")
                ),
            )
        console.print(table)
    if rules := m.get("lead_time"):
        table = Table(
            "flag rule",
            "loans flagged",
            "precision",
            "recall",
            "lead days median (all written off)",
            "lead days p25",
            title="held-out loans: flagging before the write-off",
        )
        for r in rules:
            table.add_row(
                r["rule"],
                f"{r['flagged_loans']:,}",
                _fmt(r["precision"]),
                _fmt(r["recall"]),
                _fmt(r["lead_days_median"]),
                _fmt(r["lead_days_p25"]),
            )
        console.print(table)
    for name, rows in (m.get("fairness") or {}).items():
        table = Table(
            name,
            "loans",
            "default rate",
            "HIGH flag rate",
            "HIGH AIR",
            "MODERATE+ flag rate",
            "MODERATE+ AIR",
            title=f"fairness by {name} (not model inputs)",
        )
        for r in rows:
            table.add_row(
                r["group"],
                f"{r['loans']:,}",
                _fmt(r["default_rate"]),
                _fmt(r["high_flag_rate"]),
                _fmt(r["high_adverse_impact_ratio"]),
                _fmt(r["moderate_flag_rate"]),
                _fmt(r["moderate_adverse_impact_ratio"]),
            )
        console.print(table)


def report(
    model: Path = typer.Option(..., help="Bundle directory written by `train`."),
    out: Path = typer.Option(..., help="HTML file to write."),
    source: HistorySource | None = typer.Option(None, help="With --input: its kind."),
    input_path: Path | None = typer.Option(
        None,
        "--input",
        help="Show this book (scored by the bundle) instead of the training "
        "book in the segment map, profiles, score distribution and strategy mix, and replay it "
        "through the scorer for the guardrail-interventions section; a seed CSV "
        "or an event log also fills the strategy-outcomes section.",
    ),
    policy_path: Path | None = typer.Option(
        None,
        "--policy",
        help="Policy file whose costs: price the strategy outcomes and whose guardrails: the "
        "replay passes through.",
    ),
    evaluation_path: Path | None = typer.Option(
        None,
        "--evaluation",
        help="JSON written by `loan-recovery evaluate --json`: fills the learned-policy section.",
    ),
    partial_fraction: float = typer.Option(
        0.5,
        help="Seed CSV: recovered fraction of the outstanding amount that 'Partially "
        "Recovered' stands for (docs/STRATEGY.md).",
    ),
) -> None:
    """Write the interactive, self-contained HTML report of the model and the segmentation."""
    from models.data.adapters import AdapterError, read_history
    from models.report.guardrails import guardrail_summary
    from models.report.render import write_report
    from models.serving.bundle import BundleError, ModelBundle
    from models.serving.policy import Policy, PolicyError
    from models.strategy.outcome_table import strategy_segment_table
    from models.strategy.outcomes import OutcomeError, book_outcomes
    from models.training.population import input_data

    try:
        bundle = ModelBundle.load(model)
    except BundleError as error:
        fail(f"--model {model}: {error}")
    population, table, guardrails = None, None, None
    if input_path is not None:
        if source is None:
            fail("--input needs --source seed|uci|events")
        if not input_path.exists():
            fail(f"--input {input_path}: no such file")
        try:
            policy = Policy.load(policy_path)
        except PolicyError as error:
            fail(f"--policy {policy_path}: {error}")
        try:
            with _console().status(f"scoring {input_path}"):
                history = read_history(source.value, input_path)
                population = input_data(bundle, history)
                outcomes = book_outcomes(
                    source.value, input_path, history.events, policy.costs, partial_fraction
                )
                guardrails = guardrail_summary(history.events, bundle, policy)
        except OutcomeError as error:
            fail(f"--policy / --partial-fraction: {error}")
        except (AdapterError, ValueError) as error:
            fail(f"--input {input_path}: {error}")
        segment_by_loan = population.pop("segment_by_loan")
        if outcomes is not None and len(outcomes):
            table = strategy_segment_table(outcomes, segment_by_loan)
    evaluation = None
    if evaluation_path is not None:
        import json

        try:
            evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            fail(f"--evaluation {evaluation_path}: cannot read it ({error})")
        if not isinstance(evaluation, dict) or "estimates" not in evaluation:
            fail(f"--evaluation {evaluation_path}: not the JSON of `loan-recovery evaluate --json`")
    try:
        write_report(bundle, out, population, table, evaluation, guardrails)
    except OSError as error:
        fail(f"--out {out}: cannot write the report ({error.strerror})")
    typer.echo(f"report -> {out}")
