"""Streaming quality on real data: the scorer's scores on UCI held-out clients, against the
outcomes and against the same bundle scoring offline.

The stream is only worth its speed if it computes the same thing as the offline model. So a
bundle is trained on the UCI "default of credit card clients" file (``loan-recovery train
--source uci``, seeded 70/30 split by client), the held-out clients' events are produced to a
fresh 6-partition topic, and the real exactly-once scorer (``loan-recovery serve``) consumes them
all. Each client's streamed score is the last ``risk_score`` the scorer committed for it, read
from its changelog (``LoanState`` records, last write wins). Figures:

- ``uci_stream_auc``: ROC AUC of those streamed scores against the outcome (target >= 0.78; the
  offline holdout AUC is ~0.785);
- ``uci_max_abs_score_diff``: max |streamed - offline| over the held-out clients, where offline is
  the bundle's ``predict_proba`` on each client's final feature row (the state after all its
  events, from ``models.training.snapshots.snapshot_set``)
  (target <= 1e-9: the stream is the batch model, exactly).

The held-out ids are recovered by ``models.training.early_warning.holdout_loans``: the file is
replayed into the same snapshots and checked against the bundle's ``training_data_sha256``,
then the bundle's recorded holdout share and seed re-run ``split_by_loan``, so the split is
the training run's.

The data file is not in the repository: ``../shared/data/UCI_Credit_Card.csv`` by default, or
``--input``. Without it the figures are null with a note. Run alone (starts its own broker)::

    python -m bench.uci_quality --json
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    PARTITIONS,
    ROOT,
    broker_and_workdir,
    cli,
    create_topics,
    end_offsets,
    read_topic,
    scorer_command,
    standalone_parser,
    stop_process,
    watch_group_until_done,
)

UCI_CSV = ROOT.parent / "shared" / "data" / "UCI_Credit_Card.csv"
AUC_TARGET = 0.78
DIFF_TARGET = 1e-9


@dataclass
class UciResult:
    uci_stream_auc: float | None
    uci_max_abs_score_diff: float | None
    uci_offline_auc: float | None = None  # the same holdout scored offline
    holdout_clients: int = 0
    events: int = 0
    stream_seconds: float = 0.0  # scorer over the holdout events (committed offsets)
    train_seconds: float | None = None  # `train --source uci` on the whole file, wall clock
    note: str | None = None


@dataclass
class Holdout:
    loan_ids: list[str]
    outcomes: np.ndarray
    batch_scores: np.ndarray
    events: list[dict[str, Any]]


def holdout_of(csv: Path, model: Path) -> Holdout:
    """The bundle's held-out clients, their outcomes, offline scores and events."""
    from consumer.processor import model_row
    from models.data.adapters.uci import read_uci
    from models.serving.bundle import ModelBundle
    from models.training.early_warning import holdout_loans

    bundle = ModelBundle.load(model)
    history = read_uci(csv)
    snaps, test = holdout_loans(history, bundle.metadata)
    ids = [snaps.loan_ids[i] for i in test]
    wanted = set(ids)
    scores = bundle.predict_proba([model_row(list(row)) for row in snaps.final_x[test]])
    events = [e for e in history.events if e["loan_id"] in wanted]
    return Holdout(ids, snaps.outcome[test], np.asarray(scores, dtype=np.float64), events)


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> int:
    from producer.engine import EventProducer

    summary = EventProducer({"bootstrap.servers": bootstrap}, topic).run(events)
    if not summary.ok:
        raise RuntimeError(f"producing the holdout failed: {summary.first_error}")
    return summary.acknowledged


def stream_scores(bootstrap: str, model: Path, topic: str) -> tuple[dict[str, float], float]:
    """Run the exactly-once scorer over ``topic`` to its end; (last committed risk_score per
    loan from its changelog, seconds from first to last commit)."""
    from schemas import AvroSerde

    group = f"bench-uci-{uuid.uuid4().hex[:6]}"
    command = scorer_command(bootstrap, model, topic, group, "exactly-once")
    scorer = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        progress = watch_group_until_done(bootstrap, group, topic, end_offsets(bootstrap, topic))
    finally:
        stop_process(scorer)
    serde, last = AvroSerde("LoanState"), {}

    def keep(message: Any) -> None:
        key = message.key().decode()
        if key == "__partition__":
            return
        if message.value() is None:
            last.pop(key, None)
        else:
            last[key] = serde.decode(message.value())["risk_score"]

    read_topic(bootstrap, f"{group}-app.loan-state-changelog", keep)
    return last, progress.seconds


def measure_uci(bootstrap: str, work: Path, csv: Path = UCI_CSV) -> UciResult:
    """Both figures (null with a note when the data file is missing); see the module docstring."""
    from sklearn.metrics import roc_auc_score

    if not csv.exists():
        return UciResult(None, None, note=f"{csv} not found: UCI figures not measured")
    model = work / "uci-model"
    started = time.perf_counter()
    cli("train", "--source", "uci", "--input", str(csv), "--out", str(model))
    train_seconds = time.perf_counter() - started
    holdout = holdout_of(csv, model)
    topic = f"bench.uci.{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], PARTITIONS)
    events = produce(bootstrap, topic, holdout.events)
    streamed, seconds = stream_scores(bootstrap, model, topic)
    missing = [loan for loan in holdout.loan_ids if streamed.get(loan) is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} holdout clients have no streamed score, e.g. {missing[:3]}"
        )
    stream = np.array([streamed[loan] for loan in holdout.loan_ids], dtype=np.float64)
    return UciResult(
        uci_stream_auc=float(roc_auc_score(holdout.outcomes, stream)),
        uci_max_abs_score_diff=float(np.max(np.abs(stream - holdout.batch_scores))),
        uci_offline_auc=float(roc_auc_score(holdout.outcomes, holdout.batch_scores)),
        holdout_clients=len(holdout.loan_ids),
        events=events,
        stream_seconds=seconds,
        train_seconds=train_seconds,
    )


def main() -> None:
    parser = standalone_parser(__doc__)
    parser.add_argument("--input", type=Path, default=UCI_CSV, help="UCI_Credit_Card.csv")
    args = parser.parse_args()
    started = time.monotonic()
    with broker_and_workdir(args.bootstrap_servers) as (bootstrap, work):
        result = measure_uci(bootstrap, work, args.input)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    elif result.note:
        print(result.note)
    else:
        print(
            f"UCI holdout ({result.holdout_clients:,} clients): stream AUC "
            f"{result.uci_stream_auc:.4f} (offline {result.uci_offline_auc:.4f}), max "
            f"|stream - batch| {result.uci_max_abs_score_diff:.2e}; "
            f"{time.monotonic() - started:.0f} s"
        )


if __name__ == "__main__":
    main()
