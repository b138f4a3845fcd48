"""The strategy commands (issue 14): simulate, train-strategy, evaluate, and their errors
(in process, on the `loan-recovery` app itself: no interpreter start-up per command)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from loan_recovery.cli import app
from models.serving.policy import DEFAULT_POLICY, Policy


class Done:
    """A finished in-process invocation (the subprocess runner's fields, without its start-up
    cost: these tests run the commands ten times)."""

    def __init__(self, *args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr


def run_cli(*args: str) -> Done:
    return Done(*args)


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_simulate_train_and_evaluate_through_the_cli(tmp_path: Path) -> None:
    log, model = tmp_path / "log", tmp_path / "model"
    logged = _json(
        "simulate", "--loans", "1000", "--seed", "3", "--log-out", str(log),
        "--logging-policy", "random",
    )  # fmt: skip
    for key in ("net_recovery_per_loan", "recovered_per_loan", "cost_per_loan", "write_off_rate"):
        assert isinstance(logged[key], float)
    net = logged["recovered_per_loan"] - logged["cost_per_loan"]
    assert logged["net_recovery_per_loan"] == pytest.approx(net, rel=1e-12)
    frame = pd.read_csv(log / "decisions.csv")
    assert len(frame) == 1000 and frame["propensity"].between(1 / 6, 0.5).all()
    assert _json("simulate", "--loans", "1000", "--seed", "3") != logged  # the table differs
    trained = _json("train-strategy", "--input", str(log), "--out", str(model),
                    "--n-estimators", "20")  # fmt: skip
    assert trained["logged_propensities"] is True and (model / "treatment.skops").exists()
    held_out = sum(m["decisions"] for m in trained["holdout_metrics"].values())
    assert held_out == 1000 - trained["trained_on_decisions"] and 150 < held_out < 250
    learned = _json("simulate", "--loans", "800", "--seed", "4", "--run", "learned",
                    "--model", str(model))  # fmt: skip
    assert learned["policy"] == "learned" and learned["loans"] == 800
    short = run_cli("simulate", "--loans", "10", "--run", "learned", "--model", str(model),
                    "--horizon", "6")  # fmt: skip
    assert short.returncode == 2 and "--horizon 6: the treatment model" in short.stderr
    evaluated = _json("evaluate", "--model", str(model), "--input", str(log), "--bootstrap", "50")
    assert set(evaluated["estimates"]) == {"ips", "snips", "dr", "dm"}
    for estimate in evaluated["estimates"].values():
        assert estimate["low"] <= estimate["value"] <= estimate["high"]
    mix = evaluated["strategy_mix"]
    assert set(mix) == {"learned", "table"}
    for shares in mix.values():
        assert abs(sum(shares.values()) - 1) < 1e-9
    # the table's mix is the matrix applied to the log's tiers and segments
    logged = pd.read_csv(log / "decisions.csv", dtype=str)
    matrix = Policy.load(None).matrix
    cells = zip(logged["tier"], logged["segment"], strict=True)
    table = pd.Series([matrix[t][g] for t, g in cells])
    assert mix["table"]["LEGAL_NOTICE"] == pytest.approx((table == "LEGAL_NOTICE").mean())
    assert mix["learned"] != mix["table"]
    # An experiment: champion table / challenger learned arms, logged and compared.
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["experiment"] = {
        "id": "t1",
        "arms": [
            {"name": "champion", "policy": "table", "share": 0.5},
            {"name": "challenger", "policy": "learned", "share": 0.5, "epsilon": 0.2},
        ],
    }
    policy = tmp_path / "experiment.yaml"
    policy.write_text(yaml.safe_dump(data))
    run = _json(
        "simulate", "--loans", "1000", "--seed", "5", "--policy", str(policy),
        "--run", "experiment", "--model", str(model), "--log-out", str(tmp_path / "x"),
    )  # fmt: skip
    assert set(run["arms"]) == {"champion", "challenger"}
    assert set(pd.read_csv(tmp_path / "x" / "decisions.csv")["arm"]) == {"champion", "challenger"}
    compared = _json("evaluate", "--model", str(model), "--input", str(tmp_path / "x"),
                     "--policy", str(policy), "--bootstrap", "50")  # fmt: skip
    for name in ("champion", "challenger"):
        realised = compared["arms"][name]["value"]
        assert realised == pytest.approx(run["arms"][name]["net_recovery_per_loan"])
    # Without propensities only the direct method is possible, and the command says so.
    frame.drop(columns=["propensity"]).to_csv(tmp_path / "nop.csv", index=False)
    plain = run_cli("evaluate", "--model", str(model), "--input", str(tmp_path / "nop.csv"))
    assert plain.returncode == 0, plain.stderr
    assert "no propensities" in plain.stdout and "dm:" in plain.stdout and "dr:" not in plain.stdout


def test_bad_inputs_fail_with_one_clear_line(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["costs"]["CALL"]["fee_rate"] = 2
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump(data))
    done = run_cli("simulate", "--loans", "10", "--policy", str(policy))
    assert done.returncode == 2 and "costs.CALL.fee_rate: 2" in done.stderr
    done = run_cli("simulate", "--loans", "10", "--run", "experiment")
    assert done.returncode == 2 and "default_policy.yaml: no experiment: section" in done.stderr
    done = run_cli("simulate", "--loans", "10", "--run", "learned")
    assert done.returncode == 2 and "--run learned needs --model" in done.stderr
    done = run_cli("train-strategy", "--input", str(tmp_path), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "decisions.csv: no decision log" in done.stderr
    done = run_cli("evaluate", "--model", str(tmp_path), "--input", str(tmp_path))
    assert done.returncode == 2 and "--model" in done.stderr and "metadata.json" in done.stderr
