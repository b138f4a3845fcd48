"""The project's one exception root; each package derives its own errors from it."""


class LoanRecoveryError(Exception):
    """Base of every error this project raises on purpose."""
