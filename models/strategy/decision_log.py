"""The decision log: one row per strategy decision with its state, the logged propensity and the
money that followed (what the treatment model learns from and off-policy evaluation reads).

``decisions.csv`` columns: ``loan_id``, the decision features
(:data:`models.strategy.simulator.FEATURES`), ``strategy``, ``propensity`` (optional: a log
without it can only be evaluated by the direct method), ``recovered``, ``cost``, ``net``
(= recovered - cost over the ``horizon`` months after the decision), ``written_off``. A
``log.json`` next to it records the horizon and the logging policy.

>>> import tempfile
>>> from models.serving.policy import Policy
>>> from models.strategy.simulator import Book
>>> book = Book.generate(50, seed=2, policy=Policy.load(None))
>>> out = tempfile.mkdtemp()
>>> path = write_log(out, book, book.run(book.random_choice()), "random")
>>> log = DecisionLog.read(out)
>>> len(log), log.horizon, bool((log.propensity > 0).all())
(50, 12, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import ModelsError
from models.strategy.simulator import FEATURES, STRATEGIES, Book, Outcome

LOG_FILE = "decisions.csv"
META_FILE = "log.json"
OUTCOME_COLUMNS = ("recovered", "cost", "net")


class DecisionLogError(ModelsError, ValueError):
    """A decision log that is missing, or has a bad column or value (named in the message)."""


@dataclass(frozen=True)
class DecisionLog:
    """A validated decision log (arrays aligned by row)."""

    loan_id: np.ndarray
    x: np.ndarray
    strategy: np.ndarray  # index into STRATEGIES
    propensity: np.ndarray | None
    net: np.ndarray
    recovered: np.ndarray
    cost: np.ndarray
    horizon: int
    source: str = ""
    arm: np.ndarray | None = None  # experiment arm per decision, when the log has one

    def __len__(self) -> int:
        return len(self.net)

    def subset(self, rows: np.ndarray) -> DecisionLog:
        """The decisions at ``rows`` (indices or a mask)."""
        return DecisionLog(
            loan_id=self.loan_id[rows],
            x=self.x[rows],
            strategy=self.strategy[rows],
            propensity=None if self.propensity is None else self.propensity[rows],
            net=self.net[rows],
            recovered=self.recovered[rows],
            cost=self.cost[rows],
            horizon=self.horizon,
            source=self.source,
            arm=None if self.arm is None else self.arm[rows],
        )

    def split_by_loan(self, holdout: float, seed: int) -> tuple[DecisionLog, DecisionLog]:
        """(train, holdout): a seeded split of the loans, every decision of a loan on one side."""
        from sklearn.model_selection import GroupShuffleSplit

        split = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
        train, test = next(split.split(self.x, groups=self.loan_id))
        return self.subset(train), self.subset(test)

    @classmethod
    def read(cls, path: str | Path) -> DecisionLog:
        """Read a log directory (or its ``decisions.csv``) and validate every column."""
        path = Path(path)
        csv = path / LOG_FILE if path.is_dir() else path
        if not csv.exists():
            raise DecisionLogError(
                f"{csv}: no decision log; write one with "
                "`loan-recovery simulate --log-out DIR --logging-policy random`"
            )
        frame = pd.read_csv(csv, dtype={"loan_id": str, "strategy": str})
        required = ("loan_id", *FEATURES, "strategy", *OUTCOME_COLUMNS)
        if missing := [c for c in required if c not in frame.columns]:
            raise DecisionLogError(f"{csv}: missing column(s) {', '.join(missing)}")
        if frame.empty:
            raise DecisionLogError(f"{csv}: no decisions")
        numeric = [*FEATURES, *OUTCOME_COLUMNS]
        if "propensity" in frame.columns:
            numeric.append("propensity")
        for column in numeric:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
            if bad.size:
                row = int(bad[0])
                raise DecisionLogError(
                    f"{csv}: row {row + 2}, column {column}: {frame[column].iloc[row]!r} "
                    "is not a finite number"
                )
            frame[column] = values
        unknown = ~frame["strategy"].isin(STRATEGIES)
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DecisionLogError(
                f"{csv}: row {row + 2}, column strategy: unknown strategy "
                f"{frame['strategy'].iloc[row]!r}; use one of {', '.join(STRATEGIES)}"
            )
        propensity = None
        if "propensity" in frame.columns:
            propensity = frame["propensity"].to_numpy(dtype=float)
            bad = np.flatnonzero((propensity <= 0) | (propensity > 1))
            if bad.size:
                row = int(bad[0])
                raise DecisionLogError(
                    f"{csv}: row {row + 2}, column propensity: {propensity[row]!r} must be "
                    "in (0, 1]"
                )
        meta_path = csv.parent / META_FILE
        horizon = 0
        if meta_path.exists():
            horizon = int(json.loads(meta_path.read_text(encoding="utf-8")).get("horizon", 0))
        index = {s: i for i, s in enumerate(STRATEGIES)}
        return cls(
            loan_id=frame["loan_id"].to_numpy(dtype=str),
            x=frame[list(FEATURES)].to_numpy(dtype=float),
            strategy=frame["strategy"].map(index).to_numpy(dtype=np.int64),
            propensity=propensity,
            net=frame["net"].to_numpy(dtype=float),
            recovered=frame["recovered"].to_numpy(dtype=float),
            cost=frame["cost"].to_numpy(dtype=float),
            horizon=horizon,
            source=str(csv),
            arm=frame["arm"].astype(str).to_numpy() if "arm" in frame.columns else None,
        )


def write_log(
    directory: str | Path,
    book: Book,
    outcome: Outcome,
    logging_policy: str,
    arms: np.ndarray | None = None,
    experiment_id: str | None = None,
) -> Path:
    """Write ``outcome`` (one decision per loan of ``book``) as a decision log directory;
    ``arms`` (one experiment arm name per loan) adds the ``arm`` column."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(book.x, columns=list(FEATURES))
    frame.insert(0, "loan_id", book.loan_ids)
    frame["tier"] = book.tier
    frame["segment"] = book.segment
    frame["strategy"] = np.array(STRATEGIES)[outcome.choice.strategy]
    frame["propensity"] = outcome.choice.propensity
    if arms is not None:
        frame["arm"] = arms
    frame["recovered"] = outcome.recovered
    frame["cost"] = outcome.cost
    frame["net"] = outcome.net
    frame["written_off"] = outcome.written_off.astype(int)
    path = directory / LOG_FILE
    frame.to_csv(path, index=False, float_format="%.17g")
    meta = {
        "horizon": book.horizon,
        "logging_policy": logging_policy,
        "seed": book.seed,
        "policy_version": book.policy.version,
        "loans": len(frame),
        "experiment_id": experiment_id,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path
