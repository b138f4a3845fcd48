"""The one librdkafka properties loader (``schemas.client_config``) that `serve`, `produce` and
`topics` all read ``--kafka-config`` with: what it accepts, what it refuses, and that both
packages really use this one (not a copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.client_config import KafkaConfigError, load_properties
from schemas.errors import LoanRecoveryError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(text)
    return path


def test_key_value_lines_comments_and_both_separators(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# SASL over TLS\n! also a comment\n\nsecurity.protocol=SASL_SSL\n"
        "sasl.mechanisms: PLAIN\n  sasl.username = loanrec  \n"
        "sasl.password=a=b:c\nssl.endpoint: https://x:1\n",
    )
    assert load_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "loanrec",
        "sasl.password": "a=b:c",  # the first separator splits; the value is verbatim
        "ssl.endpoint": "https://x:1",
    }


@pytest.mark.parametrize("line", ["just words", "=value", ": value"])
def test_a_line_without_key_and_separator_names_its_number(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, f"# header\n{line}\n")
    with pytest.raises(KafkaConfigError, match=rf"{path}, line 2: expected key=value"):
        load_properties(path)


def test_an_unreadable_file_is_a_config_error_not_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="cannot read it"):
        load_properties(tmp_path / "missing.properties")


def test_the_error_is_a_value_error_under_the_project_root() -> None:
    assert issubclass(KafkaConfigError, LoanRecoveryError)
    assert issubclass(KafkaConfigError, ValueError)  # as both former copies were


def test_producer_uses_the_shared_loader() -> None:
    import producer.config

    assert producer.config.load_properties is load_properties
    assert producer.config.KafkaConfigError is KafkaConfigError
