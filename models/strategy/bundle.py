"""The treatment-model bundle: written and verified like the early-warning bundle
(:mod:`models.serving.bundle`): skops (no pickle), a whitelist of types, the SHA-256 of every
file in ``metadata.json`` and a content version, so an edited or foreign file is refused.

>>> import tempfile
>>> from models.serving.policy import Policy
>>> from models.strategy.simulator import Book
>>> from models.strategy.decision_log import DecisionLog
>>> from models.strategy.treatment import TreatmentModel
>>> book = Book.generate(1500, seed=4, policy=Policy.load(None))
>>> out = book.run(book.random_choice())
>>> log = DecisionLog(book.x[:, 0].astype(str), book.x, out.choice.strategy,
...                   out.choice.propensity, out.net, out.recovered, out.cost, 12)
>>> directory = tempfile.mkdtemp()
>>> version = write_treatment_bundle(directory, TreatmentModel(n_estimators=5).learn(log), {})
>>> load_treatment_bundle(directory).predict(book.x[:2]).shape
(2, 6)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.serving.bundle import (
    BundleError,
    content_version,
    read_verified_metadata,
    sha256_file,
)
from models.serving.skops_io import skops_io
from models.strategy.simulator import FEATURES, STRATEGIES
from models.strategy.treatment import TreatmentModel

MODEL_FILE = "treatment.skops"
METADATA_FILE = "metadata.json"
KIND = "treatment-model"
FORMAT = 1
TRUSTED_TYPES = (
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
)


def write_treatment_bundle(
    directory: str | Path, model: TreatmentModel, metadata: dict[str, Any]
) -> str:
    """Save ``model`` and ``metadata`` (plus file hashes and version); returns the version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skops_io().dump(model.to_state(), directory / MODEL_FILE)
    meta = dict(metadata)
    meta.update(
        kind=KIND,
        format=FORMAT,
        features=list(FEATURES),
        strategies=list(STRATEGIES),
        horizon=model.horizon,
        has_propensity_model=model.propensity is not None,
        files={MODEL_FILE: sha256_file(directory / MODEL_FILE)},
    )
    meta["version"] = content_version(meta)
    text = json.dumps(meta, indent=2, sort_keys=True)
    (directory / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    return meta["version"]


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The verified metadata of a treatment bundle (hashes and version checked)."""
    directory = Path(directory)
    meta = read_verified_metadata(
        directory, "write a treatment bundle with `loan-recovery train-strategy`"
    )
    if meta.get("kind") != KIND or meta.get("format") != FORMAT:
        raise BundleError(
            f"{directory / METADATA_FILE}: not a treatment-model bundle of format {FORMAT} (an "
            "early-warning bundle? train one with `loan-recovery train-strategy`)"
        )
    if meta.get("features") != list(FEATURES) or meta.get("strategies") != list(STRATEGIES):
        raise BundleError(
            f"{directory}: trained on other features or strategies than this version uses; "
            "retrain the treatment bundle"
        )
    return meta


def load_treatment_bundle(directory: str | Path) -> TreatmentModel:
    """Load and verify a treatment bundle; :class:`BundleError` says what is wrong."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    sio = skops_io()
    meta = read_metadata(directory)
    path = Path(directory) / MODEL_FILE
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise BundleError(f"{path}: contains untrusted types {sorted(untrusted)}; refused")
        state = sio.load(path, trusted=list(TRUSTED_TYPES))
    except BundleError:
        raise
    except Exception as error:  # skops raises many types on corrupt archives
        raise BundleError(f"{path}: cannot be loaded safely ({error}); retrain") from None
    # skops trusts scikit-learn's own estimators by default: check the archive holds exactly
    # the shape this module writes, a forest per strategy and an optional forest classifier.
    arms = state.get("arms") if isinstance(state, dict) else None
    propensity = state.get("propensity") if isinstance(state, dict) else None
    if (
        not isinstance(arms, dict)
        or set(arms) != set(STRATEGIES)
        or not all(type(a) is RandomForestRegressor for a in arms.values())
        or not (propensity is None or type(propensity) is RandomForestClassifier)
    ):
        raise BundleError(
            f"{path}: untrusted content (expected one RandomForestRegressor per strategy and "
            "an optional RandomForestClassifier); refusing to use it"
        )
    return TreatmentModel(
        arms=state["arms"], propensity=state["propensity"], horizon=int(meta["horizon"])
    )
