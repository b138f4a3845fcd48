"""Held-out quality of a point-in-time model: by months on book, lead time, fairness.

All functions take the held-out :class:`~models.training.snapshots.Snapshots` rows and the
model's scores of them (what the stream would have said at each snapshot).

- :func:`by_bucket` -- ROC AUC (with a bootstrap interval over loans), calibration (mean
  score against the observed rate) and HIGH / MODERATE precision and recall per
  months-on-book bucket (:data:`BUCKETS`), or per month (``per_month``);
- :func:`lead_time` -- for written-off loans, days from the first HIGH (MODERATE) decision to
  the write-off (0 when never flagged, so every rule is measured on the same loans), against
  the industry rule "flag at 30+ days past due" with the model flagging exactly as many
  loans, with bootstrap intervals of the differences;
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
LEAD_BOOTSTRAP_REPS = 200  # cheap (loan-level arrays): ~0.1 s for 5,000 loans
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
    together: they are not independent).

    A resample is a weight per row (how often its loan was drawn), so the scores are sorted
    once and each replicate is a few O(n) array operations (:func:`_weighted_auc`) instead of
    a ``roc_auc_score`` on rows copied out: 30 % of a small ``train`` was these copies."""
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return None, None, None
    auc = float(roc_auc_score(y, p))
    loans, inverse = np.unique(loan, return_inverse=True)
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    group = np.cumsum(np.r_[True, sorted_p[1:] != sorted_p[:-1]]) - 1  # equal scores tie
    positive = y[order] == 1
    loan_of = inverse[order]
    stats = []
    for _ in range(reps):
        drawn = np.bincount(rng.integers(0, len(loans), len(loans)), minlength=len(loans))
        value = _weighted_auc(drawn[loan_of].astype(np.float64), positive, group)
        if value is not None:
            stats.append(value)
    if not stats:
        return auc, None, None
    low, high = np.percentile(stats, [2.5, 97.5])
    return auc, float(low), float(high)


def _weighted_auc(weight: np.ndarray, positive: np.ndarray, group: np.ndarray) -> float | None:
    """ROC AUC of rows sorted by score, row ``i`` counted ``weight[i]`` times, ties (equal
    ``group``) counted half: what ``roc_auc_score`` gives for the rows repeated that often
    (the Mann-Whitney form of its trapezoids). None when one class has no weight.

    >>> w = np.array([1.0, 2.0, 1.0]); pos = np.array([False, True, True])
    >>> _weighted_auc(w, pos, np.array([0, 1, 1]))
    1.0
    """
    pos_w = np.where(positive, weight, 0.0)
    neg_w = weight - pos_w
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    pos_g = np.bincount(group, weights=pos_w)
    neg_g = np.bincount(group, weights=neg_w)
    below = np.cumsum(neg_g) - neg_g  # negatives scored strictly lower than the group
    return float((pos_g * (below + 0.5 * neg_g)).sum() / (total_pos * total_neg))


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


def _first_at(rows: np.ndarray, snaps: Snapshots, flagged: np.ndarray) -> np.ndarray:
    """Per loan (index into ``snaps.loan_ids``): time (ms) of its first flagged snapshot among
    ``rows``, ``inf`` when never flagged."""
    first = np.full(len(snaps.loan_ids), np.inf)
    np.minimum.at(first, snaps.loan[rows[flagged]], snaps.at[rows[flagged]].astype(np.float64))
    return first


def _leads(first: np.ndarray, snaps: Snapshots, written_off: np.ndarray) -> np.ndarray:
    """Days from the first flag to the write-off of each ``written_off`` loan, 0 when the rule
    never flagged it (the write-off came without warning)."""
    at = first[written_off]
    return np.where(np.isfinite(at), (snaps.outcome_at[written_off] - at) / DAY_MS, 0.0)


def _flag_summary(
    name: str, first: np.ndarray, loans: np.ndarray, snaps: Snapshots, written_off: np.ndarray
) -> dict[str, Any]:
    flagged = np.isfinite(first[loans])
    hit = np.isfinite(first[written_off])
    lead = _leads(first, snaps, written_off)
    n, tp = int(flagged.sum()), int(hit.sum())
    return {
        "rule": name,
        "flagged_loans": n,
        "written_off_flagged": tp,
        "precision": tp / n if n else None,
        "recall": tp / len(written_off) if len(written_off) else None,
        # Over every written-off loan, unflagged = 0 days: the same loans for every rule.
        "lead_days_median": float(np.median(lead)) if len(lead) else None,
        "lead_days_p25": float(np.percentile(lead, 25)) if len(lead) else None,
        "lead_days_mean": float(lead.mean()) if len(lead) else None,
        # Over the written-off loans this rule flagged (differs between rules: see lead_time).
        "flagged_lead_days_median": float(np.median(lead[hit])) if tp else None,
        "flagged_lead_days_p25": float(np.percentile(lead[hit], 25)) if tp else None,
    }


def _equal_volume_first(
    rows: np.ndarray, snaps: Snapshots, p: np.ndarray, loans: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, float, int]:
    """The model flagging exactly ``n`` of ``loans``: those whose highest score is above the
    n-th highest, plus a seeded random draw of the loans tied at it (the isotonic map is a
    step function: hundreds of loans can share a score) -- each at its first snapshot scoring
    at least that. Returns (first flag times, the score, loans tied at it)."""
    best = np.full(len(snaps.loan_ids), -np.inf)
    np.maximum.at(best, snaps.loan[rows], p)
    score = float(np.sort(best[loans])[::-1][n - 1])
    above = loans[best[loans] > score]
    tied = loans[best[loans] == score]
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(snaps.loan_ids), dtype=bool)
    chosen[above] = True
    chosen[rng.choice(tied, n - len(above), replace=False)] = True
    first = _first_at(rows, snaps, (p >= score) & chosen[snaps.loan[rows]])
    return first, score, len(tied)


def _versus(
    model: np.ndarray,
    rule: np.ndarray,
    loans: np.ndarray,
    snaps: Snapshots,
    written_off: np.ndarray,
    seed: int,
    reps: int,
) -> dict[str, Any]:
    """Model minus rule, both flagging the same number of loans: precision, median and p25
    lead (all written-off loans) with 95 % bootstrap intervals resampling held-out loans
    (the flags fixed), and the loans both flag: which one warned first."""
    is_wo = snaps.outcome[loans] == 1
    m_flag, r_flag = np.isfinite(model[loans]), np.isfinite(rule[loans])
    m_lead = np.zeros(len(loans))
    r_lead = np.zeros(len(loans))
    m_lead[is_wo] = _leads(model, snaps, written_off)
    r_lead[is_wo] = _leads(rule, snaps, written_off)

    def stats(sel: np.ndarray) -> np.ndarray:
        wo = sel[is_wo[sel]]
        prec = [(is_wo[sel] & f[sel]).sum() / max(f[sel].sum(), 1) for f in (m_flag, r_flag)]
        return np.array(
            [
                prec[0] - prec[1],
                np.median(m_lead[wo]) - np.median(r_lead[wo]),
                np.percentile(m_lead[wo], 25) - np.percentile(r_lead[wo], 25),
                m_lead[wo].mean() - r_lead[wo].mean(),
            ]
        )

    point = stats(np.arange(len(loans)))
    rng = np.random.default_rng(seed)
    drawn = (rng.integers(0, len(loans), len(loans)) for _ in range(reps))
    draws = np.array([stats(d) for d in drawn if is_wo[d].any()] or [point])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    both = is_wo & m_flag & r_flag
    diff = m_lead[both] - r_lead[both]
    out: dict[str, Any] = {}
    for k, name in enumerate(("precision", "lead_days_median", "lead_days_p25", "lead_days_mean")):
        out[f"{name}_diff"] = float(point[k])
        out[f"{name}_diff_ci95"] = [float(low[k]), float(high[k])]
    out["both_flagged"] = int(both.sum())
    out["model_earlier"] = int((diff > 0).sum())
    out["same_time"] = int((diff == 0).sum())
    out["rule_earlier"] = int((diff < 0).sum())
    out["only_model"] = int((is_wo & m_flag & ~r_flag).sum())
    out["only_rule"] = int((is_wo & ~m_flag & r_flag).sum())
    return out


def lead_time(
    snaps: Snapshots,
    rows: np.ndarray,
    p: np.ndarray,
    thresholds: dict[str, float],
    seed: int = 0,
    reps: int = LEAD_BOOTSTRAP_REPS,
) -> list[dict[str, Any]]:
    """Loan-level flagging of the held-out loans, by rule: a loan is flagged at its first
    snapshot over the rule. Rules: 30+ days past due, the HIGH and MODERATE tiers, and the
    model flagging exactly as many loans as 30+ DPD (:func:`_equal_volume_first`).

    **Lead time** of a written-off loan = days from its first flag to the write-off, 0 when
    never flagged; ``lead_days_median`` / ``_p25`` / ``_mean`` are over *every* written-off
    held-out loan, so all rules are measured on the same loans and flagging one more
    defaulter can only raise a rule's lead. ``flagged_lead_days_*`` are over the written-off
    loans the rule itself flagged (the previous definition): a different set per rule, so a
    rule that also catches defaulters late (at the write-off) gets a *lower* median than one
    that misses them, and a rule that fires mostly on long histories gets a higher one -- on
    the synthetic holdout of docs/MODELS.md the model caught 128 defaulters 30+ DPD never
    flagged, at a median of 0 days, and its median over its own hits fell below the rule's
    (324 vs 352) although on the 739 both flagged it was 358 days against 350. The equal-volume
    entry carries ``versus_rule`` (:func:`_versus`): differences with bootstrap intervals.
    """
    loans = np.unique(snaps.loan[rows])
    written_off = loans[snaps.outcome[loans] == 1]
    dpd = snaps.x[rows, FEATURE_INDEX["days_past_due"]]
    rule_first = _first_at(rows, snaps, dpd >= RULE_DPD)
    out = [_flag_summary(f"{RULE_DPD}+ days past due", rule_first, loans, snaps, written_off)]
    for name in ("high", "moderate"):
        first = _first_at(rows, snaps, p > thresholds[name])
        label = f"{name.upper()} tier (> {thresholds[name]})"
        out.append(_flag_summary(label, first, loans, snaps, written_off))
    n = int(np.isfinite(rule_first[loans]).sum())
    if n:
        first, score, tied = _equal_volume_first(rows, snaps, p, loans, n, seed)
        summary = _flag_summary("model at equal volume", first, loans, snaps, written_off)
        summary["threshold"] = score
        summary["tied_loans_at_threshold"] = tied
        if len(written_off):
            summary["versus_rule"] = _versus(
                first, rule_first, loans, snaps, written_off, seed, reps
            )
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
