"""CLI command groups; each module exposes ``app`` (a sub-group) or ``register(app)``."""
