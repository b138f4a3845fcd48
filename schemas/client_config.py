"""The librdkafka properties file both Kafka-facing packages accept (``--kafka-config``).

It lives in ``schemas`` because ``consumer`` and ``producer`` must never import each other but
may both import ``schemas`` (docs/INTERNALS.md, dependency direction); each package then adds
its own guarantees on top of what the file says.

Example::

    >>> from pathlib import Path
    >>> from tempfile import NamedTemporaryFile
    >>> with NamedTemporaryFile("w", suffix=".properties", delete=False) as f:
    ...     _ = f.write("# SASL\\nsecurity.protocol=SASL_SSL\\nsasl.mechanisms: PLAIN\\n")
    >>> load_properties(Path(f.name))
    {'security.protocol': 'SASL_SSL', 'sasl.mechanisms': 'PLAIN'}
"""

from __future__ import annotations

from pathlib import Path

from schemas.errors import LoanRecoveryError


class KafkaConfigError(LoanRecoveryError, ValueError):
    """A properties file that cannot be read, or settings that contradict a guarantee; the
    message names the setting and the fix."""


def load_properties(path: Path) -> dict[str, str]:
    """Parse a Java/librdkafka ``.properties`` file: ``key=value`` (or ``key: value``) lines,
    ``#``/``!`` comments, blank lines ignored. Values are kept verbatim (no escapes), so SASL/SSL
    settings work as users know them from any librdkafka or Java client."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise KafkaConfigError(
            f"--kafka-config {path}: cannot read it ({error.strerror})"
        ) from None
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = _split_property(line)
        if not sep or not key:
            raise KafkaConfigError(
                f"--kafka-config {path}, line {number}: expected key=value, got {line!r}"
            )
        settings[key] = value
    return settings


def _split_property(line: str) -> tuple[str, str, str]:
    # Java properties accept '=' or ':' as separator; whichever comes first separates.
    positions = [i for i in (line.find("="), line.find(":")) if i >= 0]
    if not positions:
        return line, "", ""
    i = min(positions)
    return line[:i].strip(), line[i], line[i + 1 :].strip()


# Which partition a keyed record goes to, shared by every producer of loan events here (the
# event producer, the test and bench producers) and reproduced by `consumer.partitioning`:
# librdkafka's Java-compatible Murmur2, the Java client's default.
PARTITIONER = "murmur2_random"
