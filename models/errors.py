"""The root of every error :mod:`models` raises on purpose (a bad bundle, policy, input file,
event or training set). Each concrete error lives next to the code that raises it and also
derives from :class:`ValueError`, as before, so ``except ValueError`` callers keep working.

>>> from models.serving.bundle import BundleError
>>> issubclass(BundleError, ModelsError), issubclass(ModelsError, LoanRecoveryError)
(True, True)
"""

from schemas.errors import LoanRecoveryError


class ModelsError(LoanRecoveryError):
    """Base of the errors raised by :mod:`models`."""
