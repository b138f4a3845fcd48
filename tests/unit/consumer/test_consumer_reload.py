"""SIGHUP reloads (``consumer.reload``, ``ScorerApp._reload``) without a broker: the
early-warning bundle, the policy file and the treatment bundle load together or not at all,
the failure names the setting, and a good set is swapped into every processor after the old
models' open transaction commits. (tests/integration/test_stream_ops.py does it to a live
`serve` on a real broker.)"""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import pytest
from test_consumer_checkpoint import TOPICS

from consumer import reload as reload_module
from consumer.app import ScorerApp
from consumer.config import ServeConfig
from consumer.health import HealthState
from consumer.metrics import ScorerMetrics
from consumer.recovery import Recovery
from consumer.reload import ModelLoadError, Models, load_models
from models.serving.contracts import EarlyWarningModel
from models.serving.policy import Policy
from models.strategy.bundle import load_treatment_bundle, write_treatment_bundle
from models.strategy.stream import StreamStrategy


def new_treatment_version(source: Path, directory: Path, hysteresis: float) -> str:
    """The same forests under another content version (the value hysteresis is in it)."""
    if directory.exists():
        shutil.rmtree(directory)
    return write_treatment_bundle(
        directory, load_treatment_bundle(source), {"value_hysteresis": hysteresis}
    )


def break_bundle(directory: Path) -> None:
    metadata = directory / "metadata.json"
    metadata.write_bytes(metadata.read_bytes().replace(b'"', b"'", 1))  # not JSON any more


class FinishRecorder:
    """The checkpoint as ``_reload`` uses it: records what the app decided with at the time
    the open unit was committed."""

    def __init__(self, app: ScorerApp) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []

    def finish(self, why: str) -> bool:
        self.calls.append((why, self.app.policy.version))
        return True


def policy_info(metrics: ScorerMetrics) -> list[str]:
    return [s.labels["version"] for f in metrics.model_info.collect() for s in f.samples] + [
        s.labels["version"] for f in metrics.policy_info.collect() for s in f.samples
    ]


def test_load_models_names_the_setting_that_failed(
    trained_model: Path, treatment_model: Path, tmp_path: Path
) -> None:
    treatment = tmp_path / "treatment"
    shutil.copytree(treatment_model, treatment)
    break_bundle(treatment)
    with pytest.raises(ModelLoadError, match=f"--strategy-model {treatment}: ") as failed:
        load_models(trained_model, None, treatment)
    assert failed.value.setting == "--strategy-model"

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: [not, a, policy\n")
    with pytest.raises(ModelLoadError, match=f"--policy {policy}: ") as failed:
        load_models(trained_model, policy, treatment_model)
    assert failed.value.setting == "--policy"

    with pytest.raises(ModelLoadError, match=f"--model {tmp_path / 'none'}: ") as failed:
        load_models(tmp_path / "none", None, treatment_model)
    assert failed.value.setting == "--model"
    assert doctest.testmod(reload_module).failed == 0  # the module's example says the same


def test_a_failing_treatment_bundle_keeps_both_old_models_a_good_pair_swaps_both(
    trained_model: Path,
    treatment_model: Path,
    bundle: EarlyWarningModel,
    policy: Policy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    model, treatment = tmp_path / "model", tmp_path / "treatment"
    shutil.copytree(trained_model, model)
    shutil.copytree(treatment_model, treatment)
    old = Models(bundle, StreamStrategy.load(policy, None, treatment))  # as serve started
    version = json.loads((treatment / "metadata.json").read_text())["version"]
    assert isinstance(old.policy, StreamStrategy) and old.policy.version.endswith(f"+{version}")
    config = ServeConfig("b:9092", model, topics=TOPICS, instance_id="t")
    metrics, health = ScorerMetrics(), HealthState()
    app = ScorerApp(
        config, *old, metrics, health, models_loader=lambda: load_models(model, None, treatment)
    )
    metrics.set_model(old.bundle.version)
    metrics.set_policy(old.policy.version)
    recovery = Recovery(None, None, TOPICS.events, *old, None, health, metrics)  # type: ignore[arg-type]
    processor = recovery.processors[0] = recovery.new_processor(0)
    checkpoint = FinishRecorder(app)

    # A new early-warning bundle that loads, a treatment bundle that does not: nothing changes.
    break_bundle(treatment)
    capsys.readouterr()
    app._reload(recovery, checkpoint)  # type: ignore[arg-type]
    failure = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert failure["event"] == "model_reload_failed" and failure["failed"] == "--strategy-model"
    assert str(treatment) in failure["error"] and failure["keeping_policy"] == old.policy.version
    assert (app.bundle, app.policy) == (old.bundle, old.policy)
    assert (processor.bundle, processor.policy) == (old.bundle, old.policy)
    assert recovery.bundle is old.bundle and recovery.policy is old.policy
    assert checkpoint.calls == []  # nothing committed for a reload that did not happen
    assert policy_info(metrics) == [old.bundle.version, old.policy.version]

    # Both load: both are swapped in, after the old models' unit committed.
    version = new_treatment_version(treatment_model, treatment, hysteresis=40.0)
    app._reload(recovery, checkpoint)  # type: ignore[arg-type]
    reloaded = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    new = Models(app.bundle, app.policy)
    assert reloaded["event"] == "model_reloaded"
    assert reloaded["policy_version"] == new.policy.version
    assert new.bundle is not old.bundle and new.policy.version.endswith(f"+{version}")
    assert new.policy.version != old.policy.version and new.policy.margin == 40.0
    assert checkpoint.calls == [("reload", old.policy.version)]
    assert (processor.bundle, processor.policy) == new
    assert processor.guardrails is new.policy.guardrails
    assert recovery.bundle is new.bundle and recovery.policy is new.policy
    assert recovery.new_processor(1).policy is new.policy  # and a partition assigned later
    assert policy_info(metrics) == [new.bundle.version, new.policy.version]
