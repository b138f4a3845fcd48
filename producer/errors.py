"""The root of every error :mod:`producer` raises on purpose."""

from schemas.errors import LoanRecoveryError


class ProducerError(LoanRecoveryError):
    """Base of the errors raised by :mod:`producer`."""
