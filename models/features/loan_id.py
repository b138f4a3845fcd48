"""What a valid loan id is (ARCHITECTURE.md §8: "internal records never share a key space with
loan ids; loan ids are validated").

A loan id is 1 to :data:`MAX_LENGTH` (64) ASCII characters from ``A-Z a-z 0-9 _ . : -``, and
its first character is a letter or a digit. So it fits a Kafka key, a header, a metric-free log
line and a URL path (``GET /loans/{loan_id}``) as it is, and no loan id can take the form of
an internal key: those start with ``_`` (the changelog's ``__partition__``,
``consumer.partition_store.CHECKPOINT_KEY``). An event whose loan id breaks the rule is
dead-lettered with reason :data:`REASON` before it touches any state.

The scorer applies the rule twice, identically: here (the Python reference path of
``consumer.processor``) and as a byte loop over the key in the compiled event kernel
(``models.features._event_kernel``, ``valid_loan_id``), which refuses what this refuses and
hands it back to the reference (tests/unit/models/test_models_event_kernel.py).

>>> [is_valid_loan_id(s) for s in ("L7-000123", "LN_2024:0042", "__partition__", "", "Lé")]
[True, True, False, False, False]
"""

from __future__ import annotations

import re

MAX_LENGTH = 64
REASON = "invalid_loan_id"
FIRST_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
CHARACTERS = FIRST_CHARACTERS + "_.:-"
# Explicit ASCII classes (``\w`` would admit any Unicode letter); fullmatch: no trailing "\n".
_VALID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:\-]{{0,{MAX_LENGTH - 1}}}")


def is_valid_loan_id(loan_id: str) -> bool:
    """Whether ``loan_id`` follows the rule of the module docstring."""
    return _VALID.fullmatch(loan_id) is not None


def describe_invalid(loan_id: str) -> str:
    """The dead letter's message: what is wrong, without copying a huge id whole."""
    shown = loan_id if len(loan_id) <= MAX_LENGTH else f"{loan_id[:MAX_LENGTH]}..."
    return (
        f"loan_id {shown!r} ({len(loan_id)} characters) is not 1-{MAX_LENGTH} characters of "
        "A-Z a-z 0-9 _ . : - starting with a letter or digit"
    )
