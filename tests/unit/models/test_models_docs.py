"""docs/FEATURES.md documents exactly the features the state machine computes."""

from __future__ import annotations

from pathlib import Path

from models.features.columns import FEATURE_DOCS, FEATURE_NAMES, features_markdown
from models.features.state import LoanState
from schemas.events import make_event

ROOT = Path(__file__).resolve().parents[3]


def test_features_md_is_generated_from_feature_docs() -> None:
    assert (ROOT / "docs" / "FEATURES.md").read_text() == features_markdown(), (
        "regenerate: python -c 'from models.features.columns import features_markdown as f; "
        'open("docs/FEATURES.md", "w").write(f())\''
    )


def test_every_feature_has_a_definition_and_a_unit_and_is_computed() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(definition and unit for _, definition, unit in FEATURE_DOCS)
    state = LoanState.open(
        make_event(
            "e",
            "L",
            "B",
            0,
            "LoanOpened",
            dict(
                age=30,
                gender="Male",
                employment_type="Salaried",
                monthly_income=1.0,
                num_dependents=0,
                loan_amount=1.0,
                loan_tenure_months=1,
                interest_rate=1.0,
                loan_type="Home",
                collateral_value=0.0,
                monthly_emi=1.0,
            ),
        )
    )
    assert len(state.features()) == len(FEATURE_NAMES)


def test_docstring_examples_run() -> None:
    import doctest
    import importlib

    for name in (
        "features.columns",
        "features.state",
        "features.state_codec",
        "data.adapters",
        "data.adapters.seed",
        "data.adapters.uci",
        "data.adapters.events",
        "data.synthetic",
        "serving.policy",
        "serving.segmenter",
        "serving.bundle",
        "training.early_warning",
        "training.snapshots",
        "training.quality",
        "report.render",
        "native",
    ):
        module = importlib.import_module(f"models.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"models.{name}: {result.failed} docstring example(s) failed"
        assert result.attempted > 0, f"models.{name} has no runnable example"
