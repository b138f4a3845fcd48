"""What the processor needs of the model bundle, the online segmenter and the policy: exactly
the attributes and methods it uses, so ``consumer`` is typed against a contract rather than
against ``models``' classes (docs/INTERNALS.md describes the real ones; these Protocols are
meant to move into ``models`` once it defines its own)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EarlyWarningModel(Protocol):
    """The bundle: calibrated P(default) per feature row, and its tier thresholds."""

    version: str

    def predict_proba(self, rows: np.ndarray) -> np.ndarray: ...

    def tier(self, score: float) -> str: ...


class Segmenter(Protocol):
    """One partition's online clusterer (DESIGN.md §5: one per input partition)."""

    def learn_predict(self, x: np.ndarray) -> str: ...

    def to_json(self) -> str: ...


class StrategyPolicy(Protocol):
    """The versioned tier x segment -> strategy matrix with hysteresis."""

    version: str

    def decide(self, tier: str, segment: str, score: float,
               current_strategy: str | None) -> str: ...  # fmt: skip
