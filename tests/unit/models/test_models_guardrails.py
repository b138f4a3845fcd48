"""The guardrail layer (``models.serving.guardrails``): its rules one by one, and hypothesis
property tests over random event sequences and random policy choices -- any strategy a
policy could want at any event, so the table policy, a learned one and every experiment arm
are covered by the same properties."""

from __future__ import annotations

import zoneinfo
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.features.state import DPD, InvalidEvent, LoanState
from models.serving.guardrails import (
    COMPLIANCE_HOLD,
    DAY_MS,
    ESCALATION_LADDER,
    LEGAL_MIN_DPD,
    TIME_BARRED,
    GuardrailConfig,
    Guardrails,
)
from models.serving.policy import DEFAULT_POLICY, Policy, PolicyError
from schemas.events import make_event

HOUR = 3_600_000
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
POLICY = Policy.load(None)
GUARD = POLICY.guardrails
STRATEGIES = sorted(s for s in POLICY.priorities if s != "HOLD")
POLICY_TEXT = DEFAULT_POLICY.read_text()


def opened(at: int = T0, time_zone: str | None = None, jurisdiction: str | None = None) -> dict:
    body = dict(
        age=40,
        gender="Female",
        employment_type="Salaried",
        monthly_income=5000.0,
        num_dependents=1,
        loan_amount=12000.0,
        loan_tenure_months=12,
        interest_rate=9.5,
        loan_type="Personal",
        collateral_value=0.0,
        monthly_emi=1050.0,
        time_zone=time_zone,
        jurisdiction=jurisdiction,
    )
    return make_event("e-open", "L1", "B1", at, "LoanOpened", body)


class Book:
    """Builds one loan's events with fresh ids."""

    def __init__(self) -> None:
        self.n = 0

    def event(self, at: int, body_type: str, body: dict) -> dict:
        self.n += 1
        return make_event(f"e{self.n}", "L1", "B1", at, body_type, body)

    def paid(self, at: int, amount: float = 1050.0) -> dict:
        body = dict(
            installment_due_date=at // DAY_MS,
            amount_due=1050.0,
            amount_paid=amount,
            outstanding_after=9000.0,
        )
        return self.event(at, "PaymentReceived", body)

    def missed(self, at: int, dpd: int) -> dict:
        body = dict(
            installment_due_date=max(at // DAY_MS - dpd, T0 // DAY_MS),
            amount_due=1050.0,
            days_past_due=dpd,
            outstanding=9000.0,
        )
        return self.event(at, "PaymentMissed", body)

    def call(self, at: int, conversation: bool = False, channel: str = "CALL") -> dict:
        body = dict(
            method="CALLS",
            outcome="OTHER",
            legal_action=False,
            channel=channel,
            conversation=conversation,
            hold=None,
        )
        return self.event(at, "CollectionAttempt", body)

    def hold(self, at: int, action: str, reason: str) -> dict:
        body = dict(
            method="OTHER",
            outcome="OTHER",
            legal_action=False,
            channel=None,
            conversation=False,
            hold={"action": action, "reason": reason},
        )
        return self.event(at, "CollectionAttempt", body)


# -- the state keeps what the guardrails need --------------------------------------------------


def test_state_keeps_holds_calls_conversation_zone_and_last_payment() -> None:
    book = Book()
    state = LoanState.open(opened(time_zone="America/Chicago"))
    assert state.guard is not None and state.guard.time_zone == "America/Chicago"
    state.apply(book.paid(T0 + 30 * DAY_MS))
    state.apply(book.paid(T0 + 31 * DAY_MS, amount=0.0))  # a zero payment is no payment
    assert state.last_payment_at == T0 + 30 * DAY_MS
    state.apply(book.hold(T0 + 32 * DAY_MS, "SET", "BANKRUPTCY"))
    state.apply(book.hold(T0 + 33 * DAY_MS, "SET", "DISPUTE"))
    state.apply(book.hold(T0 + 34 * DAY_MS, "RELEASE", "BANKRUPTCY"))
    assert state.guard.holds == ("DISPUTE",)
    for k in range(9):
        state.apply(book.call(T0 + 40 * DAY_MS + k * HOUR, conversation=k == 3))
    assert state.guard.call_times == [T0 + 40 * DAY_MS + k * HOUR for k in range(2, 9)]
    assert state.guard.last_conversation_at == T0 + 40 * DAY_MS + 3 * HOUR
    assert state[DPD] == 0.0  # holds and calls are not payments or misses


def test_a_loan_without_contacts_or_holds_allocates_no_guard() -> None:
    book = Book()
    state = LoanState.open(opened())
    state.apply(book.paid(T0 + 30 * DAY_MS))
    state.apply(book.missed(T0 + 60 * DAY_MS, 5))
    state.apply(book.call(T0 + 61 * DAY_MS, channel="SMS"))  # not a call, no conversation
    assert state.guard is None
    assert state.last_payment_at == T0 + 30 * DAY_MS


def test_an_unknown_time_zone_is_refused_naming_it() -> None:
    with pytest.raises(InvalidEvent, match=r"Mars/Olympus") as error:
        LoanState.open(opened(time_zone="Mars/Olympus"))
    assert error.value.reason == "invalid_time_zone"


def test_copy_and_record_round_trip_keep_the_guard_independent() -> None:
    book = Book()
    state = LoanState.open(opened(time_zone="America/Denver"))
    state.apply(book.call(T0 + HOUR, conversation=True))
    copy = state.copy()
    state.apply(book.hold(T0 + 2 * HOUR, "SET", "DECEASED"))
    assert copy.guard.holds == () and state.guard.holds == ("DECEASED",)
    back = LoanState.from_record(state.to_record())
    assert back.guard.tobytes() == state.guard.tobytes()
    assert back.guard.time_zone == "America/Denver"


def test_a_v2_state_record_reads_with_an_unknown_last_payment() -> None:
    from schemas import AvroSerde

    state = LoanState.open(opened())
    state.apply(Book().paid(T0 + DAY_MS))
    v2 = AvroSerde("LoanState", writer_version=2, reader_version=2)
    record = {k: v for k, v in state.to_record().items() if k not in ("last_payment_at", "guard")}
    back = LoanState.from_record(AvroSerde("LoanState").decode(v2.encode(record)))
    assert back.last_payment_at is None  # unknown: the limitation clock runs from the opening
    assert back.features() == state.features()


# -- the rules, one by one -------------------------------------------------------------------


def test_an_active_hold_is_hold_with_its_reason_until_released() -> None:
    book = Book()
    state = LoanState.open(opened())
    state.apply(book.hold(T0 + HOUR, "SET", "ATTORNEY_REPRESENTED"))
    decision = GUARD.apply(state, "CALL", T0 + HOUR)
    assert decision.strategy == "HOLD" and decision.hold_reason == "ATTORNEY_REPRESENTED"
    assert decision.next_contact_not_before is None
    assert [(i.rule, i.wanted_strategy) for i in decision.interventions] == [
        (COMPLIANCE_HOLD, "CALL")
    ]
    state.apply(book.hold(T0 + 2 * HOUR, "RELEASE", "ATTORNEY_REPRESENTED"))
    assert GUARD.apply(state, "CALL", T0 + 2 * HOUR).strategy == "CALL"


def test_legal_notice_is_barred_on_time_barred_debt_and_below_min_dpd() -> None:
    book = Book()
    state = LoanState.open(opened())
    state.apply(book.paid(T0 + 30 * DAY_MS))
    state.apply(book.missed(T0 + 200 * DAY_MS, 120))
    ok = GUARD.apply(state, "LEGAL_NOTICE", T0 + 200 * DAY_MS)
    assert ok.strategy == "LEGAL_NOTICE" and ok.interventions == ()
    late = T0 + 30 * DAY_MS + 1096 * DAY_MS
    state.apply(book.missed(late, 900))
    barred = GUARD.apply(state, "LEGAL_NOTICE", late)
    assert barred.strategy == "DEBT_COLLECTOR"
    assert barred.interventions[0].rule == TIME_BARRED
    young = LoanState.open(opened())
    young.apply(book.missed(T0 + 40 * DAY_MS, 30))
    early = GUARD.apply(young, "LEGAL_NOTICE", T0 + 40 * DAY_MS)
    assert early.strategy == "DEBT_COLLECTOR" and early.interventions[0].rule == LEGAL_MIN_DPD


def test_the_limitation_period_is_the_loans_jurisdictions() -> None:
    """US-IL (10 years in the shipped illustrative table) still sues after 4 years, US-CA (4)
    does not; an unlisted state and a loan without a jurisdiction get the 3-year default."""
    four_years = T0 + 30 * DAY_MS + 4 * 365 * DAY_MS + DAY_MS
    outcomes = {}
    for jurisdiction in ("US-IL", "US-CA", "US-ZZ", None):
        book = Book()
        state = LoanState.open(opened(jurisdiction=jurisdiction))
        assert state.guard is None if jurisdiction is None else state.guard.jurisdiction
        state.apply(book.paid(T0 + 30 * DAY_MS))
        state.apply(book.missed(four_years, 900))
        decision = GUARD.apply(state, "LEGAL_NOTICE", four_years)
        outcomes[jurisdiction] = (decision.strategy, [i.detail for i in decision.interventions])
    assert outcomes["US-IL"] == ("LEGAL_NOTICE", [])
    assert outcomes["US-CA"][0] == "DEBT_COLLECTOR"
    assert outcomes["US-CA"][1][0].endswith("past the 1460-day limitation period (US-CA)")
    assert outcomes["US-ZZ"][1][0].endswith("1095-day limitation period (US-ZZ -> default)")
    assert outcomes[None][1][0].endswith("1095-day limitation period (unknown -> default)")
    # A listed country covers its unlisted subdivisions.
    config = GuardrailConfig(limitation_periods_days={"GB": 2190, "GB-SCT": 1825})
    assert config.limitation_days("GB-ENG") == (2190, "GB")
    assert config.limitation_days("GB-SCT") == (1825, "GB-SCT")


def test_the_jurisdiction_survives_holds_copies_and_the_state_record() -> None:
    book = Book()
    state = LoanState.open(opened(jurisdiction="US-CA"))
    state.apply(book.hold(T0 + HOUR, "SET", "DISPUTE"))
    assert state.guard.holds == ("DISPUTE",) and state.guard.jurisdiction == "US-CA"
    state.apply(book.hold(T0 + 2 * HOUR, "RELEASE", "DISPUTE"))
    assert state.guard.holds == () and not state.guard.any_hold  # the code is no hold
    assert GUARD.apply(state, "CALL", T0 + 2 * HOUR).strategy == "CALL"
    assert state.copy().guard.jurisdiction == "US-CA"
    assert LoanState.from_record(state.to_record()).guard.jurisdiction == "US-CA"


def test_loans_share_an_opening_guard_until_their_first_write() -> None:
    """Loans opened with the same time zone and jurisdiction share one guard (no bytes per
    loan); a call or hold on one copies it first, so the other keeps its own facts, and a
    restored record shares again."""
    from models.features.guard_state import is_shared

    a = LoanState.open(opened(time_zone="America/Denver", jurisdiction="US-CO"))
    b = LoanState.open(
        {**opened(time_zone="America/Denver", jurisdiction="US-CO"), "loan_id": "L2"}
    )
    assert a.guard is b.guard and is_shared(a.guard)
    a.apply(Book().call(T0 + HOUR, conversation=True))
    b.apply(Book().hold(T0 + HOUR, "SET", "BANKRUPTCY"))
    assert a.guard is not b.guard and not is_shared(a.guard) and not is_shared(b.guard)
    assert a.guard.last_conversation_at == T0 + HOUR and a.guard.holds == ()
    assert b.guard.last_conversation_at is None and b.guard.holds == ("BANKRUPTCY",)
    assert a.guard.jurisdiction == b.guard.jurisdiction == "US-CO"
    c = LoanState.open(
        {**opened(time_zone="America/Denver", jurisdiction="US-CO"), "loan_id": "L3"}
    )
    assert LoanState.from_record(c.to_record()).guard is c.guard
    assert not is_shared(LoanState.from_record(a.to_record()).guard)


@pytest.mark.parametrize("code", ["us-ca", "USA", "US-", "US-CALI", "U", 7])
def test_a_malformed_jurisdiction_is_dead_lettered_naming_it(code) -> None:
    with pytest.raises(InvalidEvent, match="US-CA") as error:
        LoanState.open(opened(jurisdiction=code))
    assert error.value.reason == "invalid_jurisdiction"
    assert repr(code) in str(error.value)


def test_the_ladder_drops_one_level_per_period_unless_the_loan_cures() -> None:
    book = Book()
    state = LoanState.open(opened())
    state.apply(book.missed(T0 + 100 * DAY_MS, 95))
    at = T0 + 100 * DAY_MS
    GUARD.record(state, "LEGAL_NOTICE", at)
    state.strategy = "LEGAL_NOTICE"
    kept = GUARD.apply(state, "AUTOMATED_REMINDER", at + 10 * DAY_MS)
    assert kept.strategy == "LEGAL_NOTICE"
    assert kept.interventions[0].rule == ESCALATION_LADDER
    step = GUARD.apply(state, "AUTOMATED_REMINDER", at + 31 * DAY_MS)
    assert step.strategy == "DEBT_COLLECTOR"  # one level, not five
    state.apply(book.paid(at + 32 * DAY_MS))  # cured: days past due back to 0
    assert GUARD.apply(state, "AUTOMATED_REMINDER", at + 32 * DAY_MS).strategy == (
        "AUTOMATED_REMINDER"
    )


def test_next_contact_respects_7_in_7_cool_off_and_local_window() -> None:
    book = Book()
    state = LoanState.open(opened(time_zone="America/New_York"))
    start = T0 + 10 * DAY_MS  # 22:13 UTC = 17:13 in New York
    for k in range(7):
        state.apply(book.call(start + k * HOUR))
    t = GUARD.next_contact_not_before(state.guard, "CALL", start + 7 * HOUR)
    assert t == start + 7 * DAY_MS  # the first of the 7 calls leaves the 7-day window
    state.apply(book.call(start + 8 * HOUR, conversation=True))  # 06:13 local: window shift
    t = GUARD.next_contact_not_before(state.guard, "CALL", start + 8 * HOUR)
    local = datetime.fromtimestamp(t / 1000, zoneinfo.ZoneInfo("America/New_York"))
    assert t >= start + 8 * HOUR + 7 * DAY_MS and 8 <= local.hour < 21


def test_guardrail_settings_are_validated_naming_the_key() -> None:
    import yaml

    data = yaml.safe_load(POLICY_TEXT)
    data["guardrails"]["legal"]["fallback"] = "LEGAL_NOTICE"
    with pytest.raises(PolicyError, match=r"guardrails\.legal\.fallback"):
        Policy.from_dict(data, source="p.yaml")
    data = yaml.safe_load(POLICY_TEXT)
    data["guardrails"]["contact"]["max_call_attempts_in_7_days"] = 9
    with pytest.raises(PolicyError, match="max_call_attempts_in_7_days"):
        Policy.from_dict(data, source="p.yaml")
    data = yaml.safe_load(POLICY_TEXT)
    data["guardrails"]["legal"]["limitation_periods_days"]["california"] = 1460
    with pytest.raises(PolicyError, match=r"limitation_periods_days\.california: not a juris"):
        Policy.from_dict(data, source="p.yaml")
    data = yaml.safe_load(POLICY_TEXT)
    data["guardrails"]["legal"]["limitation_periods_days"]["US-CA"] = "4 years"
    with pytest.raises(PolicyError, match=r"limitation_periods_days\.US-CA: '4 years' must be"):
        Policy.from_dict(data, source="p.yaml")
    data = yaml.safe_load(POLICY_TEXT)
    data["matrix"]["LOW"]["OTHERS"] = "HOLD"
    with pytest.raises(PolicyError, match=r"matrix\.LOW\.OTHERS.*guardrails only"):
        Policy.from_dict(data, source="p.yaml")


def test_defaults_are_what_the_policy_file_documents() -> None:
    import yaml

    data = yaml.safe_load(POLICY_TEXT)
    table = data["guardrails"]["legal"].pop("limitation_periods_days")
    assert Policy.from_dict(data).guardrails.config == GuardrailConfig()
    del data["guardrails"]
    assert Policy.from_dict(data).guardrails.config == GuardrailConfig()
    # The one non-default: the illustrative per-jurisdiction table (default: none, so every
    # loan gets the 3-year default), whose shortest period is the default.
    assert GUARD.config == GuardrailConfig(limitation_periods_days=table)
    assert min(table.values()) == GuardrailConfig().limitation_period_days == 1095


# -- properties over random event sequences and random policy choices --------------------------

REASONS = ("CEASE_COMMUNICATION", "ATTORNEY_REPRESENTED", "BANKRUPTCY", "DISPUTE", "DECEASED")
STEP = st.one_of(
    st.tuples(st.just("paid"), st.sampled_from([0.0, 500.0, 1050.0])),
    st.tuples(st.just("missed"), st.integers(0, 400)),
    st.tuples(st.just("call"), st.booleans()),
    st.tuples(st.just("set"), st.sampled_from(REASONS)),
    st.tuples(st.just("release"), st.sampled_from(REASONS)),
)
GAP = st.one_of(st.integers(1, 6 * HOUR), st.integers(1, 10 * DAY_MS), st.integers(1, 500 * DAY_MS))


def step_event(book: Book, kind: str, arg, at: int) -> dict:
    if kind == "paid":
        return book.paid(at, arg)
    if kind == "missed":
        return book.missed(at, arg)
    if kind == "call":
        return book.call(at, conversation=arg)
    return book.hold(at, kind.upper(), arg)


def _contact_ok(t: int, at: int, calls: list[int], conversations: list[int], zone: str) -> None:
    assert t >= at
    assert sum(1 for c in calls if t - 7 * DAY_MS < c <= t) <= 6, "8th call in 7 days"
    assert all(t >= c + 7 * DAY_MS for c in conversations), "within 7 days of a conversation"
    local = datetime.fromtimestamp(t / 1000, zoneinfo.ZoneInfo(zone))
    assert 8 <= local.hour < 21, f"{local} is outside 08:00-21:00"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone=st.sampled_from([None, "America/New_York", "America/Los_Angeles", "Asia/Kolkata"]),
    jurisdiction=st.sampled_from([None, "US-NY", "US-IL", "US-CA", "US-ZZ", "GB"]),
    steps=st.lists(st.tuples(GAP, STEP, st.sampled_from(STRATEGIES)), min_size=1, max_size=40),
)
def test_no_policy_choice_crosses_a_guardrail(zone, jurisdiction, steps) -> None:
    """For any event sequence and any strategy a policy wants at each event: no contact while
    a hold is active, no LEGAL_NOTICE on time-barred debt or below 90 days past due, every
    next contact within 7-in-7, the cool-off and the local window, and no drop faster than
    one priority level per 30 days unless the loan cured (or legal action became barred)."""
    book, priorities = Book(), POLICY.priorities
    levels = sorted({p for s, p in priorities.items() if s != "HOLD"})
    state = LoanState.open(opened(time_zone=zone, jurisdiction=jurisdiction))
    # The shipped table, read independently of the code under test (unlisted: 3 years).
    period = {"US-NY": 1095, "US-IL": 3650, "US-CA": 1460}.get(jurisdiction, 1095)
    at, active, calls, conversations, last_paid = T0, set(), [], [], None
    since: int | None = None
    for gap, (kind, arg), wanted in steps:
        at += gap
        event = step_event(book, kind, arg, at)
        state.apply(event)
        if kind == "paid" and arg > 0:
            last_paid = at
        elif kind == "call":
            calls.append(at)
            conversations += [at] if arg else []
        elif kind in ("set", "release"):
            (active.add if kind == "set" else active.discard)(arg)
        decision = GUARD.apply(state, wanted, at)
        strategy, previous = decision.strategy, state.strategy
        if active:
            assert strategy == "HOLD" and set(decision.hold_reason.split(",")) == active
            assert decision.next_contact_not_before is None
        else:
            assert strategy != "HOLD" and decision.hold_reason is None
            _contact_ok(decision.next_contact_not_before, at, calls, conversations, zone or "UTC")
        if strategy == "LEGAL_NOTICE":
            assert at - (last_paid if last_paid is not None else T0) <= period * DAY_MS
            assert state[DPD] >= 90
        if strategy != wanted:
            assert decision.interventions and decision.interventions[0].wanted_strategy == wanted
        if previous not in (None, "HOLD") and strategy != "HOLD" and state[DPD] != 0.0:
            drop = levels.index(priorities[previous]) - levels.index(priorities[strategy])
            rules = {i.rule for i in decision.interventions}
            if drop > 0 and not rules & {TIME_BARRED, LEGAL_MIN_DPD}:  # compliance first
                assert drop == 1, f"{previous} -> {strategy} in one step"
                assert since is not None and at - since >= 30 * DAY_MS
        GUARD.record(state, strategy, at)
        if strategy != previous:
            since = at
        state.strategy = strategy


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.tuples(GAP, STEP), min_size=1, max_size=30),
    scores=st.lists(st.floats(0, 1), min_size=30, max_size=30),
)
def test_the_table_policy_through_the_guardrails_never_contacts_under_hold(steps, scores) -> None:
    """The shipped table policy's own choices (tier x segment with hysteresis), guarded."""
    book = Book()
    state = LoanState.open(opened())
    at, active = T0, set()
    for i, (gap, (kind, arg)) in enumerate(steps):
        at += gap
        if kind in ("set", "release"):
            state.apply(book.hold(at, kind.upper(), arg))
            (active.add if kind == "set" else active.discard)(arg)
        else:
            state.apply(book.missed(at, 100))
        tier = POLICY.tier(scores[i])
        wanted = POLICY.decide(tier, "HIGH_RISK", scores[i], state.strategy)
        strategy = GUARD.apply(state, wanted, at).strategy
        assert (strategy == "HOLD") == bool(active)
        assert strategy != "LEGAL_NOTICE" or state[DPD] >= 90
        GUARD.record(state, strategy, at)
        state.strategy = strategy


def test_guardrails_have_a_single_entry_point_for_every_policy() -> None:
    """The processor builds its layer from the policy file, or the documented defaults for a
    policy without one (a learned policy or an arm that carries none)."""
    assert isinstance(GUARD, Guardrails)
    assert GUARD.config.limitation_period_days == 1095


# -- the learned policy and experiment arms, through the real processor -----------------------

ARM_SPEC = [
    {"name": "table-explore", "policy": "table", "share": 0.34, "epsilon": 0.5},
    {"name": "learned-explore", "policy": "learned", "share": 0.33, "epsilon": 0.5},
    {"name": "learned", "policy": "learned", "share": 0.33},
]
EXPERIMENT_IDS = [f"guard-{i}" for i in range(12)]  # L1 lands in every arm across these


class _Scores:
    """An early-warning model that gives the drawn scores in order (the guardrails must hold
    whatever the score, so the test draws it)."""

    version = "drawn"

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.n = scores, 0

    def predict_proba(self, rows):
        import numpy as np

        out = np.array(self.scores[self.n : self.n + len(rows)])
        self.n += len(rows)
        return out


class _OneSegment:
    def learn_predict(self, x) -> str:
        return "HIGH_RISK"

    def to_json(self) -> str:
        return "{}"


@pytest.fixture(scope="module")
def forests(treatment_model):
    from models.strategy.stream import TreatmentForests

    return TreatmentForests.load(treatment_model)


def _strategy(forests, experiment_id: str | None):
    from models.strategy.arms import Experiment
    from models.strategy.stream import StreamStrategy

    spec = None
    if experiment_id is not None:
        spec = Experiment.from_dict({"id": experiment_id, "arms": ARM_SPEC}, "test")
    return StreamStrategy(POLICY, spec, forests)


def test_the_drawn_experiments_put_the_loan_in_every_arm() -> None:
    from models.strategy.arms import Experiment

    arms = {
        Experiment.from_dict({"id": i, "arms": ARM_SPEC}, "test").assign("L1").name
        for i in EXPERIMENT_IDS
    }
    assert arms == {a["name"] for a in ARM_SPEC}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    experiment_id=st.sampled_from([None, *EXPERIMENT_IDS]),
    zone=st.sampled_from([None, "America/New_York", "Asia/Kolkata"]),
    steps=st.lists(st.tuples(GAP, STEP), min_size=1, max_size=30),
    scores=st.lists(st.floats(0, 1), min_size=31, max_size=31),
)
def test_the_learned_policy_and_arms_never_cross_a_guardrail(
    forests, experiment_id, zone, steps, scores
) -> None:
    """The learned policy alone (no experiment id) and every arm of an experiment (table and
    learned, with and without exploration), inside the real ``PartitionProcessor``: no
    contact under a hold, no LEGAL_NOTICE on time-barred debt or below 90 days past due, every
    emitted ``next_contact_not_before`` within 7-in-7, the cool-off and the local window, no
    drop faster than the ladder allows; every change carries its arm and a propensity."""
    from consumer.processor import PartitionProcessor
    from models.strategy.simulator import STRATEGIES as VALUED
    from schemas import AvroSerde

    encode = AvroSerde("LoanEvent").encode
    processor = PartitionProcessor(
        _Scores(scores), _strategy(forests, experiment_id), 0, segmenter=_OneSegment()
    )
    priorities = POLICY.priorities
    levels = sorted({p for s, p in priorities.items() if s != "HOLD"})
    book, offset = Book(), 0

    def send(event: dict) -> list:
        nonlocal offset
        out = processor.process([(offset, b"L1", encode(event))])
        offset += 1
        assert not out.dead_letters, out.dead_letters
        return out.changes

    send(opened(time_zone=zone))
    at, active, calls, conversations, last_paid = T0, set(), [], [], None
    since: int | None = T0
    for gap, (kind, arg) in steps:
        at += gap
        previous = processor.store.states["L1"].strategy
        changes = send(step_event(book, kind, arg, at))
        state = processor.store.states["L1"]
        if kind == "paid" and arg > 0:
            last_paid = at
        elif kind == "call":
            calls.append(at)
            conversations += [at] if arg else []
        elif kind in ("set", "release"):
            (active.add if kind == "set" else active.discard)(arg)
        strategy = state.strategy
        assert (strategy == "HOLD") == bool(active)
        if strategy == "LEGAL_NOTICE":
            assert at - (last_paid if last_paid is not None else T0) <= 1095 * DAY_MS
            assert state[DPD] >= 90
        for change in changes:
            assert change.arm is not None and 0 < change.propensity <= 1
            assert change.experiment_id == experiment_id
            assert (change.expected_net_recovery is not None) == (change.new_strategy in VALUED)
            if active:
                assert set(change.hold_reason.split(",")) == active
                assert change.next_contact_not_before is None
            else:
                _contact_ok(change.next_contact_not_before, at, calls, conversations, zone or "UTC")
        moved = previous not in (None, "HOLD") and strategy not in ("HOLD", previous)
        if moved and state[DPD] != 0.0:  # (a cured loan may drop at once)
            drop = levels.index(priorities[previous]) - levels.index(priorities[strategy])
            rules = {g.rule for c in changes for g in c.guardrails}
            if drop > 0 and not rules & {TIME_BARRED, LEGAL_MIN_DPD}:  # compliance first
                assert drop == 1, f"{previous} -> {strategy} in one step"
                assert since is not None and at - since >= 30 * DAY_MS
        if strategy != previous:
            since = at
