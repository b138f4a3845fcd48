"""What ``serve`` loads at start and reloads on SIGHUP: the early-warning bundle (``--model``),
the policy file (``--policy``) and, with the policy's ``experiment:`` or ``--strategy-model``,
the treatment bundle behind the learned policy (``models.strategy.stream``).

All three are read again on a reload, because they are one decision function: the policy
file holds the table, the guardrails and the experiment's arms that say which loans the
treatment model decides for, and :class:`~models.strategy.stream.StreamStrategy` is built
from the file and the bundle together. Reloading only the bundle would leave an edited
policy file half applied until the next restart, which then applies it anyway; a reload does
exactly what a restart would load (the same function). :func:`load_models` either returns
all of them, loaded and verified, or raises :class:`ModelLoadError` naming the setting that
failed; ``consumer.app`` swaps them together or keeps all the old ones.

>>> from pathlib import Path
>>> try:
...     load_models(Path("no-such-bundle"), None, None)
... except ModelLoadError as error:
...     error.setting
'--model'
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

from models.errors import ModelsError
from models.serving.contracts import EarlyWarningModel, StrategyPolicy

_T = TypeVar("_T")


class Models(NamedTuple):
    """What decides: the early-warning model and the strategy policy (the table, or the
    learned policy and arms over it)."""

    bundle: EarlyWarningModel
    policy: StrategyPolicy


ModelsLoader = Callable[[], Models]


class ModelLoadError(ModelsError, ValueError):
    """One of the settings did not load or verify; the message names it and its path,
    :attr:`setting` is the flag (``--model``, ``--policy`` or ``--strategy-model``)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def load_models(model: Path, policy: Path | None, strategy_model: Path | None) -> Models:
    """Load and verify all three, in order; the first failure raises :class:`ModelLoadError`.
    Any exception counts (a reload must never take the scorer down: a permission error or a
    truncated file is as much a bad setting as a tampered hash)."""
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy
    from models.strategy.stream import StrategySetupError, StreamStrategy

    bundle = _stage("--model", model, lambda: ModelBundle.load(model))
    table = _stage("--policy", policy, lambda: Policy.load(policy))
    try:
        decides = StreamStrategy.load(table, policy, strategy_model)
    except StrategySetupError as error:  # its message already names the setting and the fix
        raise ModelLoadError(error.setting, str(error)) from None
    except Exception as error:  # a bug or an unreadable file: the bundle if one is given
        setting, path = (
            ("--strategy-model", strategy_model) if strategy_model else ("--policy", policy)
        )
        raise ModelLoadError(setting, _message(setting, path, error)) from None
    return Models(bundle, decides)


def _stage(setting: str, path: Path | None, load: Callable[[], _T]) -> _T:
    try:
        return load()
    except Exception as error:
        raise ModelLoadError(setting, _message(setting, path, error)) from None


def _message(setting: str, path: Path | None, error: Exception) -> str:
    """``--model DIR: what is wrong``; an error of an unexpected type also names its type."""
    expected = isinstance(error, ModelsError | FileNotFoundError)
    what = str(error) if expected else f"{type(error).__name__}: {error}"
    return f"{setting} {path}: {what}"
