"""The model bundle: one directory the stream loads safely.

``model.skops`` (the calibrated pipeline, saved with skops: no pickle, and loading accepts
only the types in :data:`TRUSTED_TYPES`) + ``report_data.json`` (what the report draws) +
``metadata.json`` (version, trained-at,
training-data hash, feature list, metrics, calibration, thresholds, segmenter init, the
SHA-256 of every file). ``version`` is a hash of the model file and the metadata, so any
edit to either after training makes :meth:`ModelBundle.load` fail with :class:`BundleError`.

>>> import tempfile
>>> from models.training.early_warning import train_bundle
>>> from models.data.synthetic import generate_book
>>> from models.data.adapters import seed_frame_history
>>> frame, _, _ = generate_book(300, seed=3)
>>> out = tempfile.mkdtemp()
>>> _ = train_bundle(seed_frame_history(frame), out, holdout=0.3, seed=0, n_estimators=20)
>>> bundle = ModelBundle.load(out)
>>> bundle.thresholds, len(bundle.feature_names) == len(bundle.metadata["features"])
({'high': 0.75, 'moderate': 0.5}, True)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelsError
from models.features.columns import FEATURE_NAMES
from models.serving.contributions import Explanation, TopContributions
from models.serving.forest import FastCalibratedForest, fast_predictor, is_fast_servable

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
FORMAT = 1
# Everything the saved pipeline is made of; skops refuses to load any other type.
TRUSTED_TYPES = (
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "builtins.slice",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
)


class BundleError(ModelsError, ValueError):
    """A bundle that is missing, incomplete, tampered with or of an unknown format."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_version(metadata: dict[str, Any]) -> str:
    """Hash of the metadata (which holds every file's hash), without the version itself."""
    body = {k: v for k, v in metadata.items() if k != "version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def read_verified_metadata(directory: Path, how_to_make: str) -> dict[str, Any]:
    """A bundle directory's ``metadata.json``, checked against tampering: valid JSON, its
    ``version`` equal to its content's hash, every listed file present with its SHA-256.
    ``how_to_make`` ends the error when there is no metadata (which command writes one)."""
    meta_path = directory / METADATA_FILE
    if not meta_path.exists():
        raise BundleError(f"{directory}: no {METADATA_FILE}; {how_to_make}")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{meta_path}: not valid JSON ({error}); retrain") from None
    if not isinstance(metadata, dict):
        raise BundleError(f"{meta_path}: unknown bundle format; retrain with this version")
    if metadata.get("version") != content_version(metadata):
        raise BundleError(
            f"{meta_path} was modified after training (its content does not "
            "match version); retrain or restore the bundle"
        )
    for name, expected in metadata.get("files", {}).items():
        path = directory / name
        if not path.exists():
            raise BundleError(f"{path}: missing from the bundle; restore it or retrain")
        if sha256_file(path) != expected:
            raise BundleError(
                f"{path} was modified after training (SHA-256 mismatch); "
                "retrain or restore the bundle"
            )
    return metadata


class ModelBundle:
    """A loaded bundle: calibrated P(default), tiers and the segmenter's starting point."""

    def __init__(self, model: Any, metadata: dict[str, Any], path: Path | None = None) -> None:
        self.model = model
        self.metadata = metadata
        self.path = path
        self.version: str = metadata["version"]
        self.feature_names: list[str] = list(metadata["features"])
        # What training evaluated the model at (confusion counts, report). The served tier is
        # the policy's (models.serving.contracts): one owner for the thresholds.
        self.thresholds: dict[str, float] = dict(metadata["thresholds"])
        self.segmenter_init: dict[str, Any] = metadata["segmenter"]
        self._forest = FastCalibratedForest(model) if is_fast_servable(model) else None
        self._predict = self._forest.predict_proba if self._forest else fast_predictor(model)

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        """Load and verify a bundle; :class:`BundleError` says what is wrong."""
        from models.serving.skops_io import skops_io

        sio = skops_io()
        directory = Path(directory)
        metadata = read_verified_metadata(
            directory, "is this a bundle written by `loan-recovery train`?"
        )
        if metadata.get("format") != FORMAT:
            raise BundleError(
                f"{directory / METADATA_FILE}: unknown bundle format; retrain with this version"
            )
        model_path = directory / MODEL_FILE
        try:
            untrusted = set(sio.get_untrusted_types(file=model_path)) - set(TRUSTED_TYPES)
            if untrusted:
                raise BundleError(
                    f"{model_path}: contains untrusted types "
                    f"{sorted(untrusted)}; refusing to load it"
                )
            model = sio.load(model_path, trusted=list(TRUSTED_TYPES))
        except BundleError:
            raise
        except Exception as error:  # skops raises many types on corrupt archives
            raise BundleError(f"{model_path}: cannot be loaded safely ({error}); retrain") from None
        if list(metadata.get("features", [])) != list(FEATURE_NAMES):
            # The model reads features by position: a different state machine would feed it
            # the wrong columns silently.
            theirs, ours = metadata.get("features", []), list(FEATURE_NAMES)
            diff = sorted(set(theirs) ^ set(ours)) or ["(same names, different order)"]
            raise BundleError(
                f"{directory}: trained on a different feature vector than this "
                f"version computes (differs in {', '.join(diff[:5])}); retrain "
                "the bundle with this version"
            )
        single_threaded(model)
        return cls(model, metadata, directory)

    def predict_proba(self, rows: Any) -> np.ndarray:
        """Calibrated P(default) per row of ``features()`` vectors. Each row's score depends
        on that row only (never on the rest of the batch). Served by
        :class:`models.serving.forest.FastCalibratedForest`: scikit-learn's result, bit for bit."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim == 1:
            if x.size == 0:  # [] is no rows, not one row of no features
                return np.zeros(0)
            x = x.reshape(1, -1)
        if x.shape[0] == 0:
            return np.zeros(0)
        return self._predict(x)

    def explain(self, rows: np.ndarray) -> Explanation | None:
        """Each row's score decomposed onto the model inputs (bias + contributions = the
        served score, ``models.serving.contributions``); None for a model of another shape
        than training writes (it has no path decomposition here)."""
        if self._forest is None:
            return None
        return self._forest.explain(
            np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
        )

    def explain_top(self, rows: np.ndarray, k: int) -> TopContributions | None:
        """Each row's ``k`` largest served contributions (:meth:`explain`'s cells, ranked as
        ``models.serving.reasons.top_reasons`` ranks them): what emitted records carry."""
        if self._forest is None:
            return None
        return self._forest.explain_top(
            np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES)), k
        )

    def __repr__(self) -> str:
        return f"ModelBundle(version={self.version!r}, features={len(self.feature_names)})"


def single_threaded(model: Any) -> None:
    """Predict with one thread: joblib threads add the trees' votes in completion order, and
    floating-point sums in a different order can differ in the last bit."""
    for name, value in model.get_params(deep=True).items():
        if name.endswith("n_jobs") and value not in (None, 1):
            model.set_params(**{name: 1})
    for calibrated in getattr(model, "calibrated_classifiers_", []):
        estimator = calibrated.estimator
        for step in getattr(estimator, "steps", [(None, estimator)]):
            if hasattr(step[1], "n_jobs"):
                step[1].n_jobs = 1
