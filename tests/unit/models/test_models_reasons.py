"""models.serving.reasons: the catalogue covers every possible model input once, bands pick the
right text, and a record gets 1-3 reasons, the risk-raising inputs first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.features.columns import FEATURE_INDEX
from models.serving.reasons import (
    CATALOGUE,
    catalogue_markdown,
    reason_code,
    top_reasons,
)
from models.training.early_warning import model_inputs

ROOT = Path(__file__).resolve().parents[3]


def test_every_possible_model_input_has_exactly_one_band_free_entry() -> None:
    everything = set(model_inputs(use_age=True, use_treatments=True))
    catalogued = {entry.feature for entry in CATALOGUE}
    assert catalogued == everything
    assert "gender" not in catalogued  # never an input (Reg B)
    for feature in everything:
        free = [e for e in CATALOGUE if e.feature == feature and e.at_least is None]
        assert len(free) == 1, feature
    codes = [entry.code for entry in CATALOGUE]
    assert len(set(codes)) == len(codes)
    texts = [entry.text for entry in CATALOGUE]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0.0, "R04"),
        (1.0, "R01"),
        (29.0, "R01"),
        (30.0, "R02"),
        (59.9, "R02"),
        (60.0, "R03"),
        (400.0, "R03"),
        (math.nan, "R04"),
        (-3.0, "R04"),
    ],
)
def test_days_past_due_bands(value: float, code: str) -> None:
    assert reason_code("days_past_due", value).code == code


def test_models_md_prints_the_catalogue() -> None:
    assert catalogue_markdown() in (ROOT / "docs" / "MODELS.md").read_text(), (
        "paste models.serving.reasons.catalogue_markdown() into docs/MODELS.md"
    )


INPUTS = tuple(
    FEATURE_INDEX[n]
    for n in ("days_past_due", "num_missed", "monthly_income", "loan_type", "interest_rate")
)


def row_with(days_past_due: float) -> np.ndarray:
    row = np.zeros(len(FEATURE_INDEX))
    row[FEATURE_INDEX["days_past_due"]] = days_past_due
    return row


def codes(chosen) -> list[str]:
    return [entry.code for entry, _ in chosen]


def one(served: np.ndarray, raw: np.ndarray, row: np.ndarray) -> list:
    """``top_reasons`` of a single row."""
    (chosen,) = top_reasons(INPUTS, served[None, :], raw[None, :], row[None, :])
    return chosen


def test_the_top_three_risk_raising_inputs_largest_first() -> None:
    served = np.array([0.20, 0.05, -0.10, 0.30, 0.01])
    chosen = one(served, served, row_with(75))
    assert [e.feature for e, _ in chosen] == ["loan_type", "days_past_due", "num_missed"]
    assert [v for _, v in chosen] == [0.30, 0.20, 0.05]
    assert codes(chosen)[1] == "R03"  # the band of the row's value: 60 or more days past due


def test_fewer_than_three_raise_the_risk() -> None:
    served = np.array([-0.20, 0.05, -0.10, -0.30, 0.0])
    assert [e.feature for e, _ in one(served, served, row_with(0))] == ["num_missed"]


def test_nothing_raises_the_risk_then_the_largest_alone() -> None:
    served = np.array([-0.20, -0.05, -0.10, -0.30, -0.01])
    chosen = one(served, served, row_with(0))
    assert [(e.feature, v) for e, v in chosen] == [("interest_rate", -0.01)]


def test_a_flat_calibration_is_ranked_by_the_forests_own_contributions() -> None:
    """Served contributions all 0 (the isotonic map is flat there): one reason, the input
    with the largest raw contribution, reported with its served 0."""
    served = np.zeros(5)
    raw = np.array([0.01, 0.04, -0.02, 0.0, 0.03])
    chosen = one(served, raw, row_with(0))
    assert [(e.feature, v) for e, v in chosen] == [("num_missed", 0.0)]


def test_rows_of_a_batch_are_ranked_independently() -> None:
    served = np.array([[0.20, 0.05, -0.10, 0.30, 0.01], [-0.2, -0.1, -0.3, -0.4, -0.5]])
    rows = np.stack([row_with(75), row_with(5)])
    first, second = top_reasons(INPUTS, served, served, rows)
    assert codes(first) == ["R40", "R03", "R11"]
    assert [(e.code, v) for e, v in second] == [("R11", -0.1)]


def test_reason_codes_of_a_batch_are_reason_code_of_each_cell() -> None:
    """The vectorised lookup the processor uses gives :func:`reason_code`'s entry for every
    cell: each band's bounds, just below them, NaN and negative values, band-free inputs."""
    from models.serving.reasons import reason_codes

    features = sorted({entry.feature for entry in CATALOGUE})
    positions = np.array([FEATURE_INDEX[f] for f in features])
    bounds = sorted({float(e.at_least) for e in CATALOGUE if e.at_least is not None})
    levels = [math.nan, -3.0, 0.0, *bounds, *(b - 1e-9 for b in bounds), 1e9]
    rng = np.random.default_rng(5)
    columns = rng.choice(positions, (2000, 3))
    rows = rng.choice(levels, (2000, len(FEATURE_INDEX)))
    codes = reason_codes(columns, rows)
    assert codes.shape == (2000, 3)
    for i in range(2000):
        for j in range(3):
            feature = features[int(np.flatnonzero(positions == columns[i, j])[0])]
            assert CATALOGUE[codes[i, j]] == reason_code(feature, rows[i, columns[i, j]])
    assert {CATALOGUE[c].code for c in codes.ravel()} >= {"R01", "R02", "R03", "R04", "R07"}


def test_an_input_outside_the_catalogue_is_refused() -> None:
    from models.serving.reasons import reason_codes

    with pytest.raises(KeyError, match="gender"):
        reason_codes(np.array([[FEATURE_INDEX["gender"]]]), np.zeros((1, len(FEATURE_INDEX))))
