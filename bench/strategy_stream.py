"""What the stream's learned policy earns from what the stream sees, with and without income
reports (LoanEvent v4), offline: docs/STRATEGY.md "What the missing income ratio costs".

A treatment model is fitted on seed 101's randomised log (10,000 loans, 100 trees per
strategy: ``simulate --log-out`` + ``train-strategy``, as ``bench/strategy.py``), and its
learned policy chooses on seed 202 (20,000 loans) from three views of the same book:

- ``full``: the simulator's state ``book.x`` (true income ratio);
- ``stream_no_reports``: ``decision_features(stream_rows(book), score)`` (income ratio 1.0);
- ``stream_with_reports``: the same with ``book.income_reports()`` (the shocked borrowers'
  disclosures, ``Book.income_reports``).

Each is run on the book (common random numbers) and reported as net recovery per loan and as
multiples of the table's and the oracle's. Run::

    python -m bench.strategy_stream --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bench.strategy import TEST_SEED, TRAIN_SEED, _cli


def measure(train_loans: int = 10000, test_loans: int = 20000) -> dict[str, object]:
    from loan_recovery.commands.strategy import _learned
    from models.serving.policy import Policy
    from models.strategy.simulator import Book, Choice
    from models.strategy.stream_features import decision_features, stream_rows

    work = Path(tempfile.mkdtemp(prefix="bench-strategy-stream-"))
    train_log, model = work / "train", work / "model"
    _cli(
        "simulate", "--loans", str(train_loans), "--seed", str(TRAIN_SEED),
        "--log-out", str(train_log), "--logging-policy", "random",
    )  # fmt: skip
    _cli("train-strategy", "--input", str(train_log), "--out", str(model))
    policy = Policy.load(None)
    book = Book.generate(test_loans, TEST_SEED, policy)
    learned = _learned(model, policy)
    rows, score = stream_rows(book), book.col["risk_score"]
    reports = book.income_reports()
    views = {
        "full": book.x,
        "stream_no_reports": decision_features(rows, score),
        "stream_with_reports": decision_features(rows, score, reports),
    }
    table = float(book.run(book.table_choice()).net.mean())
    oracle = float(book.run(book.greedy_choice(book.oracle_values())).net.mean())
    shocked = book.col["income_ratio"] < 0.75
    result: dict[str, object] = {
        "train": {"seed": TRAIN_SEED, "loans": train_loans},
        "test": {"seed": TEST_SEED, "loans": test_loans},
        "shocked_share": float(shocked.mean()),
        "shocked_reported_share": float((reports == reports)[shocked].mean()),
        "table_net_per_loan": table,
        "oracle_net_per_loan": oracle,
    }
    for name, x in views.items():
        chosen = learned.predict(x)
        net = float(book.run(Choice(chosen, np.ones(len(chosen)))).net.mean())
        result[name] = {"net_per_loan": net, "over_table": net / table, "over_oracle": net / oracle}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure()
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
