"""Held-out quality of a point-in-time model: by months on book, lead time, fairness.

All functions take the held-out :class:`~models.training.snapshots.Snapshots` rows and the
model's scores of them (what the stream would have said at each snapshot).

- :func:`by_bucket` -- ROC AUC (with a bootstrap interval over loans), calibration (mean
  score against the observed rate) and HIGH / MODERATE precision and recall per
  months-on-book bucket (:data:`BUCKETS`), or per month (``per_month``);
- :func:`lead_time` -- for written-off loans, days from the first HIGH (MODERATE) decision to
  the write-off, against the industry rule "flag at 30+ days past due" at the same number of
  flagged loans;
- :func:`fairness` -- flag rate, observed default rate and adverse-impact ratio by gender and
  by age band (62+ against the rest); the attributes come from the state, not from the model.

>>> import numpy as np
>>> y = np.array([0, 1, 0, 1]); p = np.array([0.1, 0.8, 0.4, 0.6])
>>> _auc_ci(y, p, np.arange(4), np.random.default_rng(0), reps=20)[0]
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.features.columns import FEATURE_INDEX, decode
from models.training.snapshots import DAY_MS, Snapshots

BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3", 3, 3),
    ("4-6", 4, 6),
    ("7-11", 7, 11),
    ("12+", 12, np.inf),
)
BOOTSTRAP_REPS = 100
RULE_DPD = 30  # the industry rule the model is compared with: flag at 30+ days past due
SENIOR_AGE = 62  # Reg B 12 CFR 1002.6(b)(2)


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


def _auc_ci(
    y: np.ndarray,
    p: np.ndarray,
    loan: np.ndarray,
    rng: np.random.Generator,
    reps: int = BOOTSTRAP_REPS,
) -> tuple[float | None, float | None, float | None]:
    """ROC AUC and its 95 % bootstrap interval, resampling loans (a loan's snapshots move
    together: they are not independent)."""
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return None, None, None
    auc = float(roc_auc_score(y, p))
    loans, inverse = np.unique(loan, return_inverse=True)
    members = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[members], np.arange(len(loans) + 1))
    stats = []
    for _ in range(reps):
        drawn = rng.integers(0, len(loans), len(loans))
        rows = np.concatenate([members[starts[k] : starts[k + 1]] for k in drawn])
        if len(set(y[rows].tolist())) == 2:
            stats.append(roc_auc_score(y[rows], p[rows]))
    if not stats:
        return auc, None, None
    low, high = np.percentile(stats, [2.5, 97.5])
    return auc, float(low), float(high)


def _tier_stats(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = p > threshold
    tp = int((flagged & (y == 1)).sum())
    n, positives = int(flagged.sum()), int((y == 1).sum())
    return {
        "flagged": n,
        "precision": tp / n if n else None,
        "recall": tp / positives if positives else None,
    }


def _summary(
    label: str,
    y: np.ndarray,
    p: np.ndarray,
    loan: np.ndarray,
    thresholds: dict[str, float],
    rng: np.random.Generator,
) -> dict[str, Any]:
    auc, low, high = _auc_ci(y, p, loan, rng)
    mean_p, observed = float(p.mean()), float(y.mean())
    return {
        "bucket": label,
        "snapshots": len(y),
        "loans": len(np.unique(loan)),
        "positives": int(y.sum()),
        "roc_auc": auc,
        "roc_auc_ci95": [low, high],
        "mean_predicted": mean_p,
        "observed_rate": observed,
        "calibration_gap": mean_p - observed,
        "high": _tier_stats(y, p, thresholds["high"]),
        "moderate": _tier_stats(y, p, thresholds["moderate"]),
    }


def by_bucket(
    snaps: Snapshots,
    rows: np.ndarray,
    p: np.ndarray,
    thresholds: dict[str, float],
    seed: int = 0,
    per_month: int = 0,
) -> list[dict[str, Any]]:
    """One summary per months-on-book bucket (:data:`BUCKETS`), or per month 1..``per_month``
    when given. ``p[i]`` is the score of row ``rows[i]``."""
    rng = np.random.default_rng(seed)
    months = snaps.months_on_book[rows]
    y, loan = snaps.y[rows], snaps.loan[rows]
    spans = [(str(m), m, m) for m in range(1, per_month + 1)] if per_month else list(BUCKETS)
    out = []
    for label, low, high in spans:
        sel = (months >= low) & (months <= high)
        if sel.any():
            out.append(_summary(label, y[sel], p[sel], loan[sel], thresholds, rng))
    return out


def _first_at(rows: np.ndarray, snaps: Snapshots, flagged: np.ndarray) -> dict[int, int]:
    """loan index -> time (ms) of its first flagged snapshot."""
    first: dict[int, int] = {}
    for r, hit in zip(rows.tolist(), flagged.tolist(), strict=True):
        if hit:
            loan, t = int(snaps.loan[r]), int(snaps.at[r])
            if loan not in first or t < first[loan]:
                first[loan] = t
    return first


def _flag_summary(
    name: str, first: dict[int, int], snaps: Snapshots, written_off: set[int]
) -> dict[str, Any]:
    flagged = set(first)
    hits = flagged & written_off
    days = np.array([(snaps.outcome_at[k] - first[k]) / DAY_MS for k in sorted(hits)])
    return {
        "rule": name,
        "flagged_loans": len(flagged),
        "written_off_flagged": len(hits),
        "precision": len(hits) / len(flagged) if flagged else None,
        "recall": len(hits) / len(written_off) if written_off else None,
        "lead_days_median": float(np.median(days)) if len(days) else None,
        "lead_days_p25": float(np.percentile(days, 25)) if len(days) else None,
    }


def lead_time(
    snaps: Snapshots, rows: np.ndarray, p: np.ndarray, thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """Loan-level flagging of the held-out loans, by rule: a loan is flagged at its first
    snapshot over the rule; lead time = days from then to the write-off (written-off loans
    flagged before it). Rules: the HIGH and MODERATE tiers, 30+ days past due, and the
    model at the score threshold that flags as many loans as 30+ DPD does (loans ranked by
    their highest score; tied scores are all flagged)."""
    loans = np.unique(snaps.loan[rows])
    written_off = {int(k) for k in loans if snaps.outcome[k] == 1}
    dpd = snaps.x[rows, FEATURE_INDEX["days_past_due"]]
    rule_first = _first_at(rows, snaps, dpd >= RULE_DPD)
    out = [_flag_summary(f"{RULE_DPD}+ days past due", rule_first, snaps, written_off)]
    for name in ("high", "moderate"):
        first = _first_at(rows, snaps, p > thresholds[name])
        out.append(
            _flag_summary(f"{name.upper()} tier (> {thresholds[name]})", first, snaps, written_off)
        )
    n = len(rule_first)
    if n:
        best = np.full(len(snaps.loan_ids), -np.inf)
        np.maximum.at(best, snaps.loan[rows], p)
        ranked = np.sort(best[loans])[::-1]
        # Just below the n-th highest score: the n top-ranked loans (and ties) are flagged.
        threshold = float(np.nextafter(ranked[n - 1], -np.inf))
        first = _first_at(rows, snaps, p > threshold)
        summary = _flag_summary("model at equal volume", first, snaps, written_off)
        summary["threshold"] = threshold
        out.append(summary)
    return out


def fairness(
    snaps: Snapshots, rows: np.ndarray, p: np.ndarray, thresholds: dict[str, float]
) -> dict[str, list[dict[str, Any]]]:
    """Per group of held-out loans: loans, observed default rate (written off, ever) and the
    share flagged HIGH / MODERATE-or-above at any snapshot, with the adverse-impact ratio
    (the group's share *not* flagged over the reference group's, the four-fifths
    convention: below 0.8 is adverse impact) and the plain flag-rate ratio. Groups: gender
    (reference Male) and age band (reference under 62)."""
    loans = np.unique(snaps.loan[rows])
    best = np.full(len(snaps.loan_ids), -np.inf)
    np.maximum.at(best, snaps.loan[rows], p)
    best = best[loans]
    outcome = snaps.outcome[loans]
    gender = np.array(
        [decode("gender", g) or "missing" for g in snaps.final_x[loans, FEATURE_INDEX["gender"]]]
    )
    age = snaps.final_x[loans, FEATURE_INDEX["age"]]
    band = np.where(
        np.isnan(age),
        "missing",
        np.where(age >= SENIOR_AGE, f"{SENIOR_AGE}+", f"under {SENIOR_AGE}"),
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for name, groups, reference in (
        ("gender", gender, "Male"),
        ("age_band", band, f"under {SENIOR_AGE}"),
    ):
        ref = groups == reference
        rows_out = []
        for group in sorted(set(groups.tolist())):
            sel = groups == group
            row: dict[str, Any] = {
                "group": group,
                "loans": int(sel.sum()),
                "default_rate": _rate(outcome[sel] == 1),
            }
            for tier in ("high", "moderate"):
                flag = best > thresholds[tier]
                rate, ref_rate = _rate(flag[sel]), _rate(flag[ref])
                row[f"{tier}_flag_rate"] = rate
                row[f"{tier}_adverse_impact_ratio"] = (
                    (1 - rate) / (1 - ref_rate) if ref.any() and ref_rate < 1 else None
                )
                row[f"{tier}_flag_rate_ratio"] = (
                    rate / ref_rate if ref.any() and ref_rate > 0 else None
                )
            rows_out.append(row)
        out[name] = rows_out
    return out
