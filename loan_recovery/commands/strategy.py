"""``simulate``, ``train-strategy`` and ``evaluate``: strategies that learn what recovers money
(issue 14; docs/STRATEGY.md).

loan-recovery simulate --loans 20000 --seed 1 [--policy FILE] [--run table|random|learned|oracle]
                       [--model DIR] [--log-out DIR] [--json]
loan-recovery simulate --loans 20000 --seed 1 --log-out log/ --logging-policy random
loan-recovery train-strategy --input log/ --out treatment/ [--json]
loan-recovery evaluate --model treatment/ --policy FILE --input log/ [--json]
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from loan_recovery.commands.common import fail, print_json

if TYPE_CHECKING:
    import numpy as np

    from models.serving.policy import Policy
    from models.strategy.learned import LearnedPolicy
    from models.strategy.simulator import Book, Choice


class Run(StrEnum):
    table = "table"
    random = "random"
    learned = "learned"
    oracle = "oracle"
    experiment = "experiment"


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command("train-strategy")(train_strategy)
    app.command()(evaluate)


def _policy(path: Path | None) -> Policy:
    from models.serving.policy import Policy, PolicyError

    try:
        return Policy.load(path)
    except (PolicyError, ValueError) as error:
        fail(f"--policy {path}: {error}" if path else str(error))


def _learned(model: Path, policy: Policy, horizon: int | None = None) -> LearnedPolicy:
    from models.serving.bundle import BundleError
    from models.strategy.bundle import load_treatment_bundle, read_metadata
    from models.strategy.learned import LearnedPolicy

    try:
        margin = float(read_metadata(model).get("value_hysteresis", 25.0))
        learned = LearnedPolicy(load_treatment_bundle(model), policy, margin)
    except BundleError as error:
        fail(f"--model {model}: {error}")
    trained = learned.model.horizon
    if horizon is not None and trained and trained != horizon:
        fail(
            f"--horizon {horizon}: the treatment model at {model} predicts net recovery over "
            f"{trained} months; simulate with --horizon {trained} or retrain on a "
            f"{horizon}-month log"
        )
    return learned


def simulate(
    loans: int = typer.Option(..., min=1, help="Loans in the simulated book."),
    seed: int = typer.Option(0, help="Seed: borrowers and monthly shocks (common random numbers)."),
    policy_path: Path | None = typer.Option(
        None, "--policy", help="Policy file (table, tiers, costs). Default: the shipped one."
    ),
    run: Run = typer.Option(
        Run.table,
        "--run",
        "--logging-policy",
        help="Who chooses: the static table, uniform random among allowed (propensity "
        "1/k), the learned policy (--model), the oracle that knows the effects, or the "
        "policy file's experiment (champion/challenger arms by loan hash).",
    ),
    model: Path | None = typer.Option(None, help="Treatment bundle, for --run learned."),
    horizon: int = typer.Option(12, min=1, help="Months each decision is followed for."),
    log_out: Path | None = typer.Option(
        None, help="Write the decision log (decisions.csv, log.json) here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run a closed-loop simulated collections book under one policy; print net recovery."""
    import numpy as np

    from models.strategy.decision_log import write_log
    from models.strategy.simulator import Book, Choice, SimulatorError

    policy = _policy(policy_path)
    try:
        book = Book.generate(loans, seed, policy, horizon=horizon)
    except SimulatorError as error:
        fail(str(error))
    if run is Run.table or run is Run.experiment:
        choice = book.table_choice()
    elif run is Run.random:
        choice = book.random_choice()
    elif run is Run.oracle:
        choice = book.greedy_choice(book.oracle_values())
    else:
        if model is None:
            fail("--run learned needs --model DIR (a bundle from `loan-recovery train-strategy`)")
        strategies = _learned(model, policy, horizon).predict(book.x)
        choice = Choice(strategies, np.ones(len(strategies)))
    arms, experiment_id = None, None
    if run is Run.experiment:
        choice, arms, experiment_id = _experiment_choice(book, policy_path, policy, model, horizon)
    outcome = book.run(choice)
    summary = {"policy": run.value, "seed": seed, "horizon": horizon, **outcome.summary()}
    if arms is not None:
        summary["arms"] = {
            name: {
                "loans": int((arms == name).sum()),
                "net_recovery_per_loan": float(outcome.net[arms == name].mean()),
            }
            for name in dict.fromkeys(arms.tolist())
        }
    if log_out is not None:
        try:
            path = write_log(log_out, book, outcome, run.value, arms, experiment_id)
            summary["log"] = str(path)
        except OSError as error:
            fail(f"--log-out {log_out}: cannot write the log ({error.strerror})")
    if as_json:
        print_json(summary)
        return
    for key in ("net_recovery_per_loan", "recovered_per_loan", "cost_per_loan"):
        typer.echo(f"{key:>24}: {summary[key]:,.2f}")
    typer.echo(f"{'write_off_rate':>24}: {summary['write_off_rate']:.4f}")
    mix = ", ".join(f"{s} {v:.1%}" for s, v in summary["strategy_mix"].items())
    typer.echo(f"{'strategy mix':>24}: {mix}")


def _experiment_choice(
    book: Book, policy_path: Path | None, policy: Policy, model: Path | None, horizon: int
) -> tuple[Choice, np.ndarray, str]:
    from models.serving.policy import DEFAULT_POLICY
    from models.strategy.arms import Experiment, ExperimentError, episode_keys, experiment_choice
    from models.strategy.simulator import Choice
    from models.strategy.stream_features import stream_rows

    source = policy_path or DEFAULT_POLICY
    try:
        experiment = Experiment.load(source)
    except ExperimentError as error:
        fail(str(error))
    if experiment is None:
        fail(
            f"--policy {source}: no experiment: section; --run experiment needs one "
            "(see the commented example in models/serving/default_policy.yaml)"
        )
    picks = {"table": book.table_choice().strategy}
    if any(arm.policy == "learned" for arm in experiment.arms):
        if model is None:
            fail("the experiment has a learned arm: give --model DIR")
        picks["learned"] = _learned(model, policy, horizon).predict(book.x)
    # The stream's draw: each simulated loan is one episode, keyed as the stream keys it.
    episodes = episode_keys(stream_rows(book))
    strategy, propensity, arms = experiment_choice(
        book.loan_ids, episodes, book.allowed, experiment, picks
    )
    return Choice(strategy, propensity), arms, experiment.id


def train_strategy(
    input_path: Path = typer.Option(..., "--input", help="Decision log directory or CSV."),
    out: Path = typer.Option(..., help="Directory for the treatment-model bundle."),
    n_estimators: int = typer.Option(100, min=1, help="Trees per strategy's forest."),
    seed: int = typer.Option(0, help="Forest seed."),
    margin: float = typer.Option(25.0, min=0, help="The learned policy's value hysteresis."),
    holdout: float = typer.Option(
        0.2, min=0.0, max=0.9, help="Share of loans held out (split by loan) for the metrics."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Fit the treatment model (one forest per strategy) on a decision log; write a bundle."""
    import hashlib

    from models.strategy.bundle import write_treatment_bundle
    from models.strategy.decision_log import DecisionLog, DecisionLogError
    from models.strategy.treatment import TreatmentError, TreatmentModel

    try:
        log = DecisionLog.read(input_path)
        train, test = log.split_by_loan(holdout, seed) if holdout > 0 else (log, None)
        model = TreatmentModel(n_estimators=n_estimators, seed=seed).learn(train)
    except (DecisionLogError, TreatmentError) as error:
        fail(f"--input {input_path}: {error}")
    digest = hashlib.sha256(Path(log.source).read_bytes()).hexdigest()[:16]
    meta = {
        "training_log": log.source,
        "training_log_sha256": digest,
        "decisions": len(log),
        "trained_on_decisions": len(train),
        "holdout": holdout,
        "holdout_metrics": model.score(test) if test is not None else None,
        "logged_propensities": log.propensity is not None,
        "value_hysteresis": margin,
        "method": "T-learner, RandomForestRegressor per strategy on net/balance",
    }
    try:
        version = write_treatment_bundle(out, model, meta)
    except OSError as error:
        fail(f"--out {out}: cannot write the bundle ({error.strerror})")
    summary = {"version": version, "out": str(out), **meta}
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"treatment bundle {version} -> {out} ({len(train)} decisions)")
        for name, m in (meta["holdout_metrics"] or {}).items():
            typer.echo(
                f"{name:>20}: holdout R2 {m['r2']:.3f}, predicted {m['mean_predicted']:,.0f} "
                f"vs realised {m['mean_realised']:,.0f} ({int(m['decisions'])} decisions)"
            )


def evaluate(
    model: Path = typer.Option(..., help="Treatment bundle from `loan-recovery train-strategy`."),
    policy_path: Path | None = typer.Option(None, "--policy", help="Policy file (tier bounds)."),
    input_path: Path = typer.Option(..., "--input", help="Decision log (HISTORY) to evaluate on."),
    bootstrap: int = typer.Option(500, min=10, help="Bootstrap resamples (of loans)."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the estimates as JSON."),
) -> None:
    """Estimate the learned policy's net recovery per loan from a log (IPS, SNIPS, DR, DM)."""
    from models.strategy.decision_log import DecisionLog, DecisionLogError
    from models.strategy.evaluation import estimate

    policy = _policy(policy_path)
    learned = _learned(model, policy)
    try:
        log = DecisionLog.read(input_path)
    except DecisionLogError as error:
        fail(f"--input {input_path}: {error}")
    if log.horizon and learned.model.horizon and log.horizon != learned.model.horizon:
        fail(
            f"--input {input_path}: the log follows each decision for {log.horizon} months but "
            f"the model at {model} predicts {learned.model.horizon} months; evaluate on a log "
            "of the same horizon"
        )
    values = learned.model.predict(log.x)
    candidate = learned.predict(log.x)
    result = estimate(
        log.loan_id, log.strategy, log.net, log.propensity, values, candidate, bootstrap, seed
    )
    if log.arm is not None:
        from models.strategy.evaluation import compare_arms

        arms = compare_arms(log.loan_id, log.arm, log.net, bootstrap, seed)
    else:
        arms = None
    summary = {
        "candidate": "learned",
        "arms": arms,
        "decisions": len(log),
        "logged_policy_net_per_decision": float(log.net.mean()),
        "propensities": "logged" if log.propensity is not None else "missing",
        "candidate_agrees_with_log": float((candidate == log.strategy).mean()),
        "estimates": result,
    }
    summary["strategy_mix"] = _strategy_mix(input_path, candidate, policy)
    if log.propensity is not None and bool((log.propensity == 1).all()):
        summary["warning"] = (
            "the logging policy was deterministic (every propensity is 1): IPS and DR see "
            "only the decisions where it agreed with the candidate and are not trustworthy; "
            "log under a randomised policy (`simulate --logging-policy random`)"
        )
    if as_json:
        print_json(summary)
        return
    if "note" in result:
        typer.echo(f"note: {result['note']}")
    if "warning" in summary:
        typer.echo(f"warning: {summary['warning']}")
    for name, arm in (arms or {}).items():
        typer.echo(
            f"arm {name}: {arm['value']:,.2f} per loan  95% [{arm['low']:,.2f}, "
            f"{arm['high']:,.2f}]  ({int(arm['loans'])} loans, realised)"
        )
    for name in ("ips", "snips", "dr", "dm"):
        if name in result:
            e = result[name]
            typer.echo(f"{name:>6}: {e['value']:,.2f}  95% [{e['low']:,.2f}, {e['high']:,.2f}]")


def _strategy_mix(
    input_path: Path, candidate: np.ndarray, policy: Policy
) -> dict[str, dict[str, float]]:
    """Share of the log's decisions per strategy under the learned policy and, when the log has
    ``tier`` and ``segment`` columns (``simulate --log-out`` writes them), under the table."""
    import numpy as np
    import pandas as pd

    from models.strategy.decision_log import LOG_FILE
    from models.strategy.simulator import STRATEGIES

    learned = np.bincount(np.asarray(candidate, dtype=int), minlength=len(STRATEGIES))
    shares = learned / learned.sum()
    mix = {"learned": {s: float(v) for s, v in zip(STRATEGIES, shares, strict=True)}}
    csv = input_path / LOG_FILE if input_path.is_dir() else input_path
    frame = pd.read_csv(csv, dtype=str)
    if {"tier", "segment"} <= set(frame.columns):
        table = pd.Series(
            [policy.matrix[t][g] for t, g in zip(frame["tier"], frame["segment"], strict=True)]
        ).value_counts(normalize=True)
        mix["table"] = {s: float(table.get(s, 0.0)) for s in STRATEGIES}
    return mix
