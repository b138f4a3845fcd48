"""The scorer's errors, all under :class:`ConsumerError` (and so under the project's one root,
``schemas.errors.LoanRecoveryError``). The builtin bases they had before stay, so an ``except
ValueError`` / ``except RuntimeError`` written against them still catches them."""

from __future__ import annotations

from schemas.errors import LoanRecoveryError


class ConsumerError(LoanRecoveryError):
    """Base of every error the scorer raises on purpose."""


class ConfigError(ConsumerError, ValueError):
    """Settings that cannot work; the message names the setting and the fix."""


class FatalError(ConsumerError, RuntimeError):
    """The scorer cannot continue (fenced, fatal client error, unrecoverable commit)."""


class RestoreError(ConsumerError, RuntimeError):
    """A changelog partition that cannot be restored (timeout, incompatible record)."""
