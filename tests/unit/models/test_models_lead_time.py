"""Lead time against "flag at 30+ days past due" at equal flag volume (issue #13).

The definition (``models.training.quality.lead_time``) on hand-made snapshots, then the
comparison as measured on a small synthetic holdout (train one seed, test another): the
model flags exactly as many loans as the rule, beats its precision (95 % bootstrap interval
above 0) and its lead time over every written-off loan (unflagged = 0 days) on the point
estimate, and warns first more often than the rule does. On the documented 20k / 5k holdout
(docs/MODELS.md) the median-lead interval reaches 0, so this small test asserts the point
estimates, not significance.
"""

from __future__ import annotations

import numpy as np

from models.data.adapters import seed_frame_history
from models.data.synthetic import generate_frame
from models.features.columns import FEATURE_INDEX, FEATURE_NAMES
from models.training.early_warning import THRESHOLDS, fit_snapshots
from models.training.quality import _first_at, _flag_summary, lead_time
from models.training.snapshots import DAY_MS, Snapshots, snapshot_set

DPD = FEATURE_INDEX["days_past_due"]


def _snaps() -> Snapshots:
    """Four loans, snapshots on days 0, 30 and 60, outcomes dated day 60: loans 0, 1 and 3
    written off, loan 2 repaid. 30+ DPD fires on loan 0 at day 0 and loan 2 at day 30."""
    loan = np.repeat(np.arange(4), 3)
    at = np.tile(np.array([0, 30, 60]) * DAY_MS, 4)
    x = np.zeros((12, len(FEATURE_NAMES)))
    x[0:3, DPD] = 30  # loan 0, from day 0
    x[7:9, DPD] = 45  # loan 2, from day 30
    return Snapshots(
        x=x,
        y=np.zeros(12, dtype=np.int64),
        loan=loan,
        at=at,
        months_on_book=np.tile([1, 2, 3], 4),
        weight=np.full(12, 1 / 3),
        loan_ids=["L0", "L1", "L2", "L3"],
        outcome=np.array([1, 1, 0, 1]),
        outcome_at=np.full(4, 60.0 * DAY_MS),
        final_x=x[2::3],
        horizon_months=12,
    )


def test_equal_volume_is_exact_and_lead_counts_every_written_off_loan() -> None:
    snaps = _snaps()
    rows = np.arange(12)
    # Loan 0 scores 0.9 from day 0; loans 1 and 3 tie at 0.6 (on day 30 / day 60): the rule
    # flags 2 loans, so the model flags loan 0 and one of the tied two, never all three.
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.6, 0.6, 0.2, 0.2, 0.2, 0.1, 0.1, 0.6])
    rules = {r["rule"]: r for r in lead_time(snaps, rows, p, THRESHOLDS, reps=20)}
    dpd, model = rules["30+ days past due"], rules["model at equal volume"]
    assert dpd["flagged_loans"] == model["flagged_loans"] == 2
    assert model["tied_loans_at_threshold"] == 2 and model["threshold"] == 0.6
    # Rule: loan 0 warned 60 days ahead, loans 1 and 3 never (0 days) -> median 0, mean 20.
    assert dpd["lead_days_median"] == 0 and dpd["lead_days_mean"] == 20
    assert dpd["precision"] == 0.5 and dpd["flagged_lead_days_median"] == 60
    # Model: loan 0 (60 days) and loan 1 (30) or loan 3 (0 days).
    assert model["precision"] == 1.0 and model["lead_days_mean"] in (30, 20)
    vs = model["versus_rule"]
    assert vs["precision_diff"] == 0.5 and vs["both_flagged"] == 1 and vs["same_time"] == 1
    assert vs["only_rule"] == 0 and vs["only_model"] == 1


def test_a_late_extra_catch_never_lowers_the_lead() -> None:
    """Catching one more defaulter, even at its write-off, must not make a rule look later
    (the per-rule median over its own hits did: 60 -> 30 days here)."""
    snaps = _snaps()
    loans, written_off = np.arange(4), np.array([0, 1, 3])
    rows = np.arange(12)
    one = _first_at(rows, snaps, np.isin(rows, [0]))
    two = _first_at(rows, snaps, np.isin(rows, [0, 11]))  # + loan 3 on its last day
    a = _flag_summary("a", one, loans, snaps, written_off)
    b = _flag_summary("b", two, loans, snaps, written_off)
    assert b["flagged_lead_days_median"] < a["flagged_lead_days_median"]
    assert b["lead_days_median"] >= a["lead_days_median"]
    assert b["lead_days_mean"] >= a["lead_days_mean"]


def test_model_beats_30dpd_at_equal_volume_on_a_synthetic_holdout() -> None:
    """Train 3,000 loans (seed 10), test 2,000 (seed 20), 40 trees: about 30 s. Measured
    with the point-in-time seed histories (seed pairs 10/20, 11/21, 12/22): precision +0.023,
    +0.017, +0.022 (every interval above 0); median lead +61, +28, +50 days; mean +27, +9,
    +33; the model warned first on 59 / 62 / 90 of the defaulters both flag, the rule on
    8 / 41 / 33.

    The rule must not fire at the first snapshot of most of its written-off loans: the old
    reconstruction put every cured miss first, 30 days past due, so 30+ DPD flagged most
    defaulters as early as any rule can and lead time measured history length."""
    train = snapshot_set(seed_frame_history(generate_frame(3000, seed=10)[0]))
    test = snapshot_set(seed_frame_history(generate_frame(2000, seed=20)[0]))
    first = test.months_on_book == 1
    hit_at_first = first & (test.outcome[test.loan] == 1) & (test.x[:, DPD] >= 30)
    model, _ = fit_snapshots(train, np.arange(len(train.y)), n_estimators=40, n_jobs=1)
    rows = np.arange(len(test.y))
    p = model.predict_proba(test.x)[:, 1]
    rules = {r["rule"]: r for r in lead_time(test, rows, p, THRESHOLDS)}
    dpd, m = rules["30+ days past due"], rules["model at equal volume"]
    vs = m["versus_rule"]
    assert m["flagged_loans"] == dpd["flagged_loans"] > 500
    assert m["precision"] > dpd["precision"] and vs["precision_diff_ci95"][0] > 0
    assert m["lead_days_median"] >= dpd["lead_days_median"]
    assert m["lead_days_mean"] > dpd["lead_days_mean"]
    assert vs["model_earlier"] > vs["rule_earlier"]
    assert hit_at_first.sum() < 0.5 * dpd["written_off_flagged"]
    both = vs["model_earlier"] + vs["same_time"] + vs["rule_earlier"]
    assert both == vs["both_flagged"] == m["written_off_flagged"] - vs["only_model"]


def test_the_bootstrap_auc_is_roc_auc_score_of_the_resampled_rows() -> None:
    """Each replicate weights rows by how often their loan was drawn; the interval must be
    what resampling the rows themselves and calling ``roc_auc_score`` gives (ties included)."""
    from sklearn.metrics import roc_auc_score

    from models.training.quality import _auc_ci

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    p = np.round(rng.random(3000), 2)  # many ties
    loan = rng.integers(0, 600, 3000)
    auc, low, high = _auc_ci(y, p, loan, np.random.default_rng(9), reps=40)
    loans, inverse = np.unique(loan, return_inverse=True)
    draws = np.random.default_rng(9)
    stats = []
    for _ in range(40):
        drawn = draws.integers(0, len(loans), len(loans))
        rows = np.concatenate([np.flatnonzero(inverse == k) for k in drawn])
        stats.append(roc_auc_score(y[rows], p[rows]))
    want_low, want_high = np.percentile(stats, [2.5, 97.5])
    assert auc == roc_auc_score(y, p)
    assert abs(low - want_low) < 1e-12 and abs(high - want_high) < 1e-12
