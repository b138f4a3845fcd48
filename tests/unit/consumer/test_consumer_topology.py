"""Which topic layouts the scorer refuses, and that each refusal names the fix."""

from __future__ import annotations

from consumer.topology import TopicLayout, problems
from schemas.topics import Topics

T = Topics()
GOOD = {T.events: 6, T.strategy_changes: 6, T.risk_alerts: 6, T.dlq: 1, T.changelog: 6}


def test_the_layout_topics_create_makes_is_accepted() -> None:
    assert problems(TopicLayout(GOOD, "compact"), T, expected_partitions=6) == []
    assert problems(TopicLayout(GOOD, "compact,delete"), T, expected_partitions=None) == []


def test_each_problem_is_named() -> None:
    missing = problems(TopicLayout({T.events: 6}, None), T, None)
    assert len(missing) == 1 and "loan-recovery topics create --app-id loan-recovery" in missing[0]
    split = problems(TopicLayout({**GOOD, T.changelog: 3}, "compact"), T, None)
    assert split == [
        f"{T.changelog} has 3 partitions but {T.events} has 6: they must match "
        "(`loan-recovery topics create` makes them so)"
    ]
    outputs = problems(TopicLayout({**GOOD, T.risk_alerts: 2}, "compact"), T, None)
    assert len(outputs) == 1 and outputs[0].startswith(f"{T.risk_alerts} has 2 partitions")
    deleted = problems(TopicLayout(GOOD, "delete"), T, None)
    assert len(deleted) == 1 and "cleanup.policy=delete" in deleted[0]
    grown = problems(TopicLayout({**GOOD, T.events: 8}, "compact"), T, expected_partitions=6)
    assert grown[0].startswith(f"{T.events} went from 6 to 8 partitions")
