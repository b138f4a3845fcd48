"""The learned policy and the experiment arms in the stream (``models.strategy.stream``): the
mapping from the stream's loan state to the treatment model's decision features, the served
forests, and the arms inside the real ``PartitionProcessor`` (experiment fields, exact
propensities, replay stability, the compiled and the reference path agreeing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from consumer.processor import PartitionProcessor
from loan_recovery.cli import app
from models.features.columns import FEATURE_NAMES
from models.features.state import InvalidEvent, LoanState
from models.serving.policy import DEFAULT_POLICY, Policy
from models.strategy.arms import Experiment, episode_key, episode_keys, experiment_choice
from models.strategy.bundle import load_treatment_bundle
from models.strategy.simulator import FEATURES, STRATEGIES, Book
from models.strategy.stream import StrategySetupError, StreamStrategy, TreatmentForests
from models.strategy.stream_features import (
    UNOBSERVED_INCOME_RATIO,
    decision_features,
    stream_rows,
)
from schemas import AvroSerde
from schemas.events import make_event

DAY = 86_400_000
EPSILON = 0.3
EXPERIMENT = f"""
experiment:
  id: stream-test
  arms:
    - {{name: champion, policy: table, share: 0.4}}
    - {{name: challenger, policy: learned, share: 0.4, epsilon: {EPSILON}}}
    - {{name: explorer, policy: table, share: 0.2, epsilon: 0.5}}
"""


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text() + EXPERIMENT)
    return path


@pytest.fixture(scope="module")
def experiment(policy_file: Path, treatment_model: Path) -> StreamStrategy:
    strategy = StreamStrategy.load(Policy.load(policy_file), policy_file, treatment_model)
    assert isinstance(strategy, StreamStrategy)
    return strategy


def run(processor: PartitionProcessor, recs: list, batch: int) -> list:
    changes = []
    for start in range(0, len(recs), batch):
        changes += processor.process(recs[start : start + batch]).changes
    return changes


# -- the mapping -----------------------------------------------------------------------------


def test_the_simulator_state_as_stream_rows_maps_back_to_its_decision_features() -> None:
    """The training log's features and the stream's come from one function: the simulator's
    state written as stream rows maps back exactly, but for the income ratio, which the stream
    knows only where an income was reported (LoanEvent v4): exact there, 1.0 elsewhere."""
    book = Book.generate(4000, seed=9, policy=Policy.load(None))
    rows = stream_rows(book)
    assert rows.shape == (4000, len(FEATURE_NAMES))
    x = decision_features(rows, book.col["risk_score"])
    income = FEATURES.index("income_ratio")
    others = [k for k in range(len(FEATURES)) if k != income]
    np.testing.assert_allclose(x[:, others], book.x[:, others], rtol=1e-12, atol=1e-12)
    assert (x[:, income] == UNOBSERVED_INCOME_RATIO).all()
    reports = book.income_reports()
    told = reports == reports
    seen = decision_features(rows, book.col["risk_score"], reports)
    np.testing.assert_allclose(seen[:, others], x[:, others], rtol=0, atol=0)
    np.testing.assert_allclose(seen[told, income], book.col["income_ratio"][told], rtol=1e-12)
    assert (seen[~told, income] == UNOBSERVED_INCOME_RATIO).all() and told.sum() > 200


def test_the_income_ratio_is_the_latest_report_over_the_origination_income() -> None:
    """NaN (nothing reported) -> 1.0; a report of 0 (a job loss) -> 0.0; no or a zero
    origination income -> 1.0 (no ratio to form)."""
    rows = np.full((5, len(FEATURE_NAMES)), np.nan)
    rows[:, FEATURE_NAMES.index("monthly_income")] = [2000.0, 2000.0, 2000.0, 0.0, np.nan]
    reported = np.array([np.nan, 900.0, 0.0, 500.0, 500.0])
    x = decision_features(rows, np.zeros(5), reported)
    assert x[:, FEATURES.index("income_ratio")].tolist() == [1.0, 0.45, 0.0, 1.0, 1.0]
    assert (decision_features(rows, np.zeros(5))[:, FEATURES.index("income_ratio")] == 1.0).all()


def test_the_simulator_reports_a_shock_only_after_a_disclosing_contact() -> None:
    """Book.income_reports: only shocked borrowers report, only after at least one prior
    contact, what they now earn; at the documented rate 1 - (1 - p)^attempts; deterministic,
    and the book's borrowers and logging draws are those of the seed without it."""
    from models.strategy.simulator import DISCLOSURE_RATE

    policy = Policy.load(None)
    book = Book.generate(20000, seed=3, policy=policy)
    before = book.x.copy(), book.random_choice().strategy.copy()
    reports = book.income_reports()
    c, told = book.col, reports == reports
    shocked = c["income_ratio"] < 0.75
    assert not told[~shocked].any() and not told[c["prior_attempts"] == 0].any()
    np.testing.assert_array_equal(reports[told], (c["monthly_income"] * c["income_ratio"])[told])
    for k in (1, 2):
        group = shocked & (c["prior_attempts"] == k)
        expected = 1.0 - (1.0 - DISCLOSURE_RATE) ** k
        assert abs(told[group].mean() - expected) < 0.05, (k, told[group].mean())
    np.testing.assert_array_equal(book.income_reports(), reports)
    np.testing.assert_array_equal(book.x, before[0])
    np.testing.assert_array_equal(book.random_choice().strategy, before[1])


def test_a_plan_values_rows_with_their_reported_income(experiment) -> None:
    """StreamStrategy.plan takes each row's reported income: the learned arm's expected values
    are the forests' at decision_features(rows, scores, reported)."""
    book = Book.generate(400, seed=6, policy=Policy.load(None))
    rows, scores, reports = stream_rows(book), book.col["risk_score"], book.income_reports()
    loans = [LoanState(loan, "B") for loan in book.loan_ids]
    plan = experiment.plan(rows, scores.tolist(), loans, reports)
    blind = experiment.plan(rows, scores.tolist(), loans)
    learned = [
        i for i, loan in enumerate(book.loan_ids) if experiment.arm_of(loan).policy == "learned"
    ]
    expected = experiment.forests.predict(
        decision_features(rows[learned], scores[learned], reports[learned])
    )

    def values(p: object, i: int) -> list[float | None]:  # either plan (_value_at)
        return [p._value_at(i, k) for k in range(expected.shape[1])]  # type: ignore[attr-defined]

    assert [values(plan, i) for i in learned] == expected.tolist()
    told = [k for k, i in enumerate(learned) if reports[i] == reports[i]]
    assert told and any(values(plan, learned[k]) != values(blind, learned[k]) for k in told)
    # every simulated prior method is one a CollectionAttempt can record
    assert set(np.unique(book.col["prior_method"])) == {0.0, 1.0, 2.0, 4.0}


def test_a_loan_state_maps_to_the_documented_decision_features() -> None:
    """One loan through the real state machine: balance, DPD months, on-time share of the
    payments, collateral over balance, attempts and the last method (CALLS -> CALL)."""
    opened = make_event("e0", "L1", "B1", 0, "LoanOpened", dict(
        age=40, gender="Female", employment_type="Salaried", monthly_income=5000.0,
        num_dependents=1, loan_amount=12000.0, loan_tenure_months=12, interest_rate=9.5,
        loan_type="Personal", collateral_value=6000.0, monthly_emi=1050.0))  # fmt: skip
    state = LoanState.open(opened)
    paid = dict(amount_due=1050.0, amount_paid=1050.0)
    bodies = [
        (30, "PaymentReceived", dict(installment_due_date=30, outstanding_after=11000.0, **paid)),
        (65, "PaymentReceived", dict(installment_due_date=60, outstanding_after=10000.0, **paid)),
        (130, "PaymentMissed", dict(installment_due_date=90, amount_due=1050.0,
                                    days_past_due=40, outstanding=8000.0)),
        (131, "CollectionAttempt", dict(method="CALLS", outcome="NO_ANSWER", legal_action=False)),
    ]  # fmt: skip
    for n, (day, body_type, body) in enumerate(bodies, 1):
        state.apply(make_event(f"e{n}", "L1", "B1", day * DAY, body_type, body))
    row = decision_features(np.array([state.features()]), np.array([0.42]))[0]
    got = dict(zip(FEATURES, row.tolist(), strict=True))
    assert got == {
        "balance": 8000.0,
        "emi": 1050.0,
        "monthly_income": 5000.0,
        "income_ratio": 1.0,
        "collateral_ratio": 0.75,
        "months_delinquent": 2.0,  # 40 days past due: the second month
        "on_time_share": 0.5,  # one payment on time, one late
        "risk_score": 0.42,
        "prior_attempts": 1.0,
        "prior_method": 1.0 + STRATEGIES.index("CALL"),
    }


def test_the_served_forests_equal_the_treatment_model(treatment_model: Path) -> None:
    """Compiled kernel and numpy reference both give scikit-learn's predictions."""
    model = load_treatment_bundle(treatment_model)
    book = Book.generate(500, seed=3, policy=Policy.load(None))
    want = model.predict(book.x)
    for native in (None, False):
        got = TreatmentForests(model, native=native).predict(book.x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_one_strategys_forest_gives_its_column_of_all_of_them(treatment_model: Path) -> None:
    """``predict_strategy(x, k)`` (a table arm's emitted row is valued for its strategy only)
    is column ``k`` of ``predict(x)`` bit for bit, compiled and reference."""
    model = load_treatment_bundle(treatment_model)
    x = Book.generate(300, seed=4, policy=Policy.load(None)).x
    for native in (None, False):
        forests = TreatmentForests(model, native=native)
        every = forests.predict(x)
        for k in range(len(STRATEGIES)):
            assert forests.predict_strategy(x, k).tobytes() == every[:, k].copy().tobytes()


# -- arms in the processor --------------------------------------------------------------------


def test_arms_in_the_processor_fill_the_experiment_fields(bundle, experiment, records) -> None:
    changes = run(PartitionProcessor(bundle, experiment, 0), records, 2000)
    assert len(changes) > 100
    spec = Experiment.load(experiment.base.path)
    by_arm: dict[str, list] = {}
    for c in changes:
        assert c.experiment_id == "stream-test"
        assert c.arm == spec.assign(c.loan_id).name  # the stable hash, as offline
        assert 0 < c.propensity <= 1
        by_arm.setdefault(c.arm, []).append(c)
        if c.new_strategy in STRATEGIES:  # (HOLD has no value)
            assert c.expected_net_recovery is not None
        assert c.policy_rule.startswith(f"arm {c.arm}: ")
    assert set(by_arm) == {"champion", "challenger", "explorer"}
    assert all(c.propensity == 1.0 for c in by_arm["champion"])  # deterministic arm
    rules = [c.policy_rule for c in by_arm["challenger"]]
    assert any("learned: " in r for r in rules) and any("explore: " in r for r in rules)
    # Where no guardrail intervened the propensity is the arm's: (1-e) + e/k or e/k.
    for c in by_arm["challenger"]:
        if not c.guardrails and c.new_strategy != "HOLD":
            k = len(experiment._allowed[c.risk_tier])
            assert (
                min(abs(c.propensity - p) for p in (1 - EPSILON + EPSILON / k, EPSILON / k)) < 1e-12
            )
    # The learned arm chooses by value: its strategies are not the table's mix.
    learned = {c.new_strategy for c in by_arm["challenger"] if "learned: " in c.policy_rule}
    table = {c.new_strategy for c in by_arm["champion"]}
    assert learned and learned != table


def test_arm_decisions_are_replay_stable_and_equal_on_both_paths(
    bundle, experiment, records
) -> None:
    """Batch size and the compiled event kernel change nothing, experiment fields included
    (exploration draws hash the loan's episode, read from the event's own row, never the
    batch)."""
    at_once = run(PartitionProcessor(bundle, experiment, 0), records, len(records))
    by_97 = run(PartitionProcessor(bundle, experiment, 0), records, 97)
    reference = run(PartitionProcessor(bundle, experiment, 0, native=False), records, 500)
    assert at_once == by_97 == reference


def test_an_exploring_episode_explores_at_every_event_until_it_ends(
    bundle, experiment, records
) -> None:
    """In the processor, batch by batch: every emitted change of an exploring (loan,
    episode) says ``explore`` with the episode key of its own event (the state machine's
    replay gives it), no change of a non-exploring one does, and while the tier (so the
    allowed set) stays the same an explored episode emits one strategy where no guardrail
    intervened."""
    from models.data.synthetic import generate_book

    _, events, _ = generate_book(300, seed=5)
    events.sort(key=lambda e: e["occurred_at"])
    states: dict[str, LoanState] = {}
    episode_of: dict[str, str] = {}
    for event in events:
        try:
            if event["loan_id"] not in states:
                states[event["loan_id"]] = LoanState.open(event)
            else:
                states[event["loan_id"]].apply(event)
        except InvalidEvent:
            continue
        row = states[event["loan_id"]].feature_dict()
        episode_of[event["event_id"]] = episode_key(row["num_missed"], row["consecutive_missed"])
    changes = run(PartitionProcessor(bundle, experiment, 0), records, 97)
    spec = Experiment.load(experiment.base.path)
    kinds: dict[tuple[str, str], set[bool]] = {}
    held: dict[tuple[str, str, str], set[str]] = {}
    for c in changes:
        arm = spec.assign(c.loan_id)
        if arm.epsilon == 0:
            continue
        episode = episode_of[c.source_event_id]
        explored = "explore: " in c.policy_rule
        assert explored == spec.explores(arm, c.loan_id, episode)
        kinds.setdefault((c.loan_id, episode), set()).add(explored)
        if explored:
            assert c.policy_rule.endswith(f"episode {episode})")
            if not c.guardrails:
                held.setdefault((c.loan_id, episode, c.risk_tier), set()).add(c.new_strategy)
    assert sum(True in k for k in kinds.values()) > 20  # enough exploring episodes to judge
    assert all(len(k) == 1 for k in kinds.values())
    assert held and all(len(s) == 1 for s in held.values())


def test_the_stream_draws_what_the_simulator_draws(experiment) -> None:
    """The same loans and episodes (a simulated book as stream rows): the processor's plan
    wants, for the table arms, exactly the strategies the simulator's experiment logs."""
    book = Book.generate(3000, seed=4, policy=Policy.load(None))
    rows, ids = stream_rows(book), book.loan_ids  # (loan_ids builds the list per call)
    spec = Experiment.load(experiment.base.path)
    tables = [i for i, loan in enumerate(ids) if spec.assign(loan).policy == "table"]
    strategy, _, arms = experiment_choice(
        [ids[i] for i in tables],
        episode_keys(rows[tables]),
        book.allowed[tables],
        spec,
        {"table": book.table_choice().strategy[tables]},
    )
    loans = [LoanState(ids[i], "B") for i in tables]
    plan = experiment.plan(rows[tables], book.col["risk_score"][tables].tolist(), loans)
    wanted = [
        plan.decide(n, book.tier[i], book.segment[i], float(book.col["risk_score"][i]), None)
        for n, i in enumerate(tables)
    ]
    assert wanted == [STRATEGIES[s] for s in strategy]
    assert "explorer" in set(arms) and (strategy != book.table_choice().strategy[tables]).any()


def test_the_learned_policy_alone_has_no_experiment_id(bundle, treatment_model, records) -> None:
    learned = StreamStrategy.load(Policy.load(None), None, treatment_model)
    changes = run(PartitionProcessor(bundle, learned, 0), records, 2000)
    assert changes and all(c.experiment_id is None and c.arm == "learned" for c in changes)
    assert all(c.propensity == 1.0 for c in changes)
    assert learned.version.endswith(TreatmentForests.load(treatment_model).version)


def test_setup_errors_name_the_setting_and_the_fix(policy_file: Path, tmp_path: Path) -> None:
    with pytest.raises(StrategySetupError, match="pass --strategy-model DIR"):
        StreamStrategy.load(Policy.load(policy_file), policy_file, None)
    with pytest.raises(StrategySetupError, match=f"--strategy-model {tmp_path}: "):
        StreamStrategy.load(Policy.load(None), None, tmp_path)
    assert isinstance(StreamStrategy.load(Policy.load(None), None, None), Policy)  # the table


def test_score_refuses_a_learned_arm_without_the_model(trained_model, policy_file) -> None:
    result = CliRunner().invoke(
        app,
        ["score", "--model", str(trained_model), "--source", "synthetic", "--loans", "5",
         "--out", "/dev/null", "--policy", str(policy_file)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--strategy-model DIR" in result.output


@pytest.mark.parametrize("native", [True, False], ids=["kernel", "reference"])
def test_the_processor_passes_each_events_reported_income_to_the_plan(
    bundle, experiment, native: bool
) -> None:
    """A v4 income report reaches the learned policy as of its event: NaN before the report,
    the reported amount from it on, even when the batch also holds a later report."""
    encode = AvroSerde("LoanEvent").encode
    opened = make_event("o", "L1", "B1", 0, "LoanOpened", dict(
        age=40, gender="Female", employment_type="Salaried", monthly_income=3000.0,
        num_dependents=1, loan_amount=12000.0, loan_tenure_months=12, interest_rate=9.5,
        loan_type="Personal", collateral_value=0.0, monthly_emi=1050.0))  # fmt: skip
    due = dict(installment_due_date=30, amount_due=1050.0)
    missed = make_event(
        "m",
        "L1",
        "B1",
        40 * DAY,
        "PaymentMissed",
        {**due, "days_past_due": 10, "outstanding": 1.2e4},
    )

    def contact(n: int, income: float) -> dict:
        body = dict(
            method="CALLS",
            outcome="OTHER",
            legal_action=False,
            channel=None,
            conversation=True,
            hold=None,
            income_report={"monthly_income": income, "source": "BORROWER_DISCLOSURE"},
        )
        return make_event(f"c{n}", "L1", "B1", (40 + n) * DAY, "CollectionAttempt", body)

    events = [opened, missed, contact(1, 1200.0), contact(2, 900.0)]
    records = [(i, b"L1", encode(e)) for i, e in enumerate(events)]
    seen: list[list[float]] = []
    plan = experiment.plan

    def spy(rows, scores, states, reported_income=None):
        seen.append(reported_income.tolist())
        return plan(rows, scores, states, reported_income)

    processor = PartitionProcessor(bundle, experiment, 0, native=native)
    try:
        experiment.plan = spy  # type: ignore[method-assign]
        processor.process(records)
    finally:
        del experiment.plan
    assert len(seen) == 1
    reported = seen[0]
    assert [r != r for r in reported[:2]] == [True, True] and reported[2:] == [1200.0, 900.0]
    assert processor.store.states["L1"].reported_income == 900.0
