"""Default topic names (ARCHITECTURE.md §3). Every command takes overrides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    events: str = "loan.events"
    strategy_changes: str = "loan.strategy-changes"
    risk_alerts: str = "loan.risk-alerts"
    dlq: str = "loan.events.dlq"
    app_id: str = "loan-recovery"

    @property
    def changelog(self) -> str:
        return f"{self.app_id}.loan-state-changelog"


DEFAULT_PARTITIONS = 6
