"""``skops.io``, imported so that it trusts by default only the estimators our bundles hold.

On import, skops lists every scikit-learn estimator as trusted by default
(``skops.io._trusted_types`` calls ``sklearn.utils.all_estimators()``, which imports every
scikit-learn module): measured on this 2-core VM, ``import skops.io`` costs 0.9-1.0 s of CPU
after the modules a bundle needs are loaded, 0.55-0.74 s with the list below instead (each
``serve``, ``score``, ``train``, ``report``, ``explain`` start pays it once). Passing our own
list also makes the load stricter than skops' default: a bundle holding any scikit-learn
estimator that no bundle of ours is made of (``FunctionTransformer``, ``LogisticRegression``,
...) is refused as untrusted, where skops alone would have trusted it. Every loader still
checks the archive against its own ``TRUSTED_TYPES`` (``get_untrusted_types``) and loads with
exactly that list.

Import skops only through :func:`skops_io` (``tests/unit/layout`` checks it): a module that
imported ``skops.io`` first would give this process skops' full default list.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# The scikit-learn estimators our bundles are made of: the early-warning pipeline
# (models.serving.bundle.TRUSTED_TYPES) and the treatment forests
# (models.strategy.bundle.TRUSTED_TYPES). Only public estimators, a subset of what skops trusts
# by default: a private class (_CalibratedClassifier, _SigmoidCalibration) or a non-estimator
# (Tree, Bunch, numpy types) is trusted by the one bundle whose own list names it.
BUNDLE_ESTIMATORS = (
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
)


def bundle_estimators(*_: object, **__: object) -> list[tuple[str, type]]:
    """``all_estimators()``'s shape (name, class) for :data:`BUNDLE_ESTIMATORS` only."""
    found = []
    for path in BUNDLE_ESTIMATORS:
        module, name = path.rsplit(".", 1)
        found.append((name, getattr(importlib.import_module(module), name)))
    return found


def skops_io() -> ModuleType:
    """The ``skops.io`` module, its default trust narrowed to :data:`BUNDLE_ESTIMATORS` when
    this process imports it first."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    import sklearn.utils

    full = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = bundle_estimators
    try:
        import skops.io
    finally:
        sklearn.utils.all_estimators = full
    return skops.io
