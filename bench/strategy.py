"""Strategies that learn what recovers money (issue #14), the acceptance at full size, through
the public commands only:

1. ``loan-recovery simulate --loans N --seed 101 --log-out train/ --logging-policy random``:
   the randomised logging policy's log (uniform among the tier's allowed strategies, logged
   propensity 1/k) -- the only thing the learner sees;
2. ``loan-recovery train-strategy --input train/ --out model/``: the T-learner bundle;
3. on seed 202 (borrowers and shocks training never saw), ``simulate --run table``,
   ``--run learned --model model/`` and ``--run oracle`` (greedy per decision on the true
   expected net recovery of each allowed strategy, from the simulator's effect model): true net
   recovery per loan, common random numbers;
4. ``simulate --seed 202 --log-out eval/ --logging-policy random`` and
   ``evaluate --model model/ --input eval/``: IPS / SNIPS / DR / DM of the learned policy from
   that log alone, against step 3's simulated truth.

Targets: learned >= 1.10 x table and >= 0.90 x oracle; |DR - truth| <= 5% of truth and the DR
95% interval covers the truth. No broker needed::

    python -m bench.strategy --json [--loans 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEED, TEST_SEED = 101, 202


def _cli(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "loan_recovery.cli", *args, "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def measure(loans: int = 20000, work: Path | None = None) -> dict[str, Any]:
    work = Path(work or tempfile.mkdtemp(prefix="bench-strategy-"))
    started = time.perf_counter()
    n = str(loans)
    train_log, model, eval_log = work / "train", work / "model", work / "eval"
    logged = _cli(
        "simulate", "--loans", n, "--seed", str(TRAIN_SEED), "--log-out", str(train_log),
        "--logging-policy", "random",
    )  # fmt: skip
    fit_started = time.perf_counter()
    trained = _cli("train-strategy", "--input", str(train_log), "--out", str(model))
    fit_s = time.perf_counter() - fit_started
    test = ("simulate", "--loans", n, "--seed", str(TEST_SEED))
    table = _cli(*test, "--run", "table")
    learned = _cli(*test, "--run", "learned", "--model", str(model))
    oracle = _cli(*test, "--run", "oracle")
    _cli(*test, "--log-out", str(eval_log), "--logging-policy", "random")
    estimates = _cli("evaluate", "--model", str(model), "--input", str(eval_log))["estimates"]
    truth = learned["net_recovery_per_loan"]
    dr = estimates["dr"]
    result = {
        "loans": loans,
        "train_seed": TRAIN_SEED,
        "test_seed": TEST_SEED,
        "training_log_policy_net_per_loan": logged["net_recovery_per_loan"],
        "treatment_bundle": trained["version"],
        "train_strategy_wall_s": round(fit_s, 1),
        "net_per_loan": {
            "table": table["net_recovery_per_loan"],
            "learned": truth,
            "oracle": oracle["net_recovery_per_loan"],
        },
        "write_off_rate": {
            "table": table["write_off_rate"],
            "learned": learned["write_off_rate"],
            "oracle": oracle["write_off_rate"],
        },
        "cost_per_loan": {"table": table["cost_per_loan"], "learned": learned["cost_per_loan"]},
        "strategy_mix": {"table": table["strategy_mix"], "learned": learned["strategy_mix"]},
        "learned_over_table": truth / table["net_recovery_per_loan"],
        "learned_over_oracle": truth / oracle["net_recovery_per_loan"],
        "estimates": estimates,
        "dr_relative_error": (dr["value"] - truth) / truth,
        "dr_interval_covers_truth": dr["low"] <= truth <= dr["high"],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["targets_met"] = {
        "learned >= 1.10 x table": result["learned_over_table"] >= 1.10,
        "learned >= 0.90 x oracle": result["learned_over_oracle"] >= 0.90,
        "|DR - truth| <= 5%": abs(result["dr_relative_error"]) <= 0.05,
        "DR 95% interval covers truth": result["dr_interval_covers_truth"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.loans, args.work)
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    for key in ("net_per_loan", "learned_over_table", "learned_over_oracle", "targets_met"):
        print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
