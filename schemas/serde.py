"""Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + binary body.

The writer's schema is looked up by fingerprint among every released version and resolved to
the reader's schema, so producers and consumers upgrade independently. Anything that cannot be
decoded raises :class:`SchemaDecodeError` (with a machine-readable ``reason``), never a bare
library exception: the stream routes it to the dead-letter topic.

Example::

    >>> serde = AvroSerde("EarlyWarningAlert")
    >>> alert = {"event_id": "e1", "loan_id": "L1", "borrower_id": "B1", "previous_tier": None,
    ...          "risk_tier": "HIGH", "risk_score": 0.9, "segment": "HIGH_RISK",
    ...          "model_version": "m1", "source_event_id": "s1", "source_offset": 7,
    ...          "occurred_at": 0, "decided_at": 1}
    >>> serde.decode(serde.encode(alert)) == alert
    True
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from schemas.errors import LoanRecoveryError
from schemas.registry import SchemaRegistry, SchemaVersion, default_registry

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10


def _without_addresses(message: str) -> str:
    """fastavro names the buffer it read from by its memory address (``<_io.BytesIO object at
    0x7f...>``); without it the same bad record gets the same message (a DLQ header) on every
    replay."""
    return _OBJECT_ADDRESS.sub("the record", message)


_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class SchemaDecodeError(LoanRecoveryError, ValueError):
    """Bytes that are not a decodable single-object Avro record of the expected schema.

    ``reason`` is one of ``bad_header`` (too short or wrong magic), ``unknown_fingerprint``
    (writer schema not among the released versions), ``wrong_schema`` (a known schema of
    another record type) or ``undecodable`` (the body does not match the writer schema).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AvroSerde:
    """Encode with one writer version, decode any released version into one reader version.

    Unions of records decode as ``(full_record_name, record)`` tuples and encode from the
    same, so the type of a ``LoanEvent`` body is explicit on both sides.
    """

    def __init__(
        self,
        name: str,
        *,
        registry: SchemaRegistry | None = None,
        writer_version: int | None = None,
        reader_version: int | None = None,
    ) -> None:
        self.registry = registry or default_registry()
        self.name = name
        self.writer: SchemaVersion = self.registry.get(name, writer_version)
        self.reader: SchemaVersion = self.registry.get(name, reader_version)
        self._header = MAGIC + self.writer.fingerprint

    def encode(self, record: dict[str, Any]) -> bytes:
        buffer = BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self.writer.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        writer = self._writer_of(data)
        reader = None if writer is self.reader else self.reader.parsed
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(buffer, writer.parsed, reader, return_record_name=True)
        except Exception as error:  # fastavro raises many types for corrupt input
            raise SchemaDecodeError(
                "undecodable",
                f"{self.name} body does not match {writer.name} v{writer.version}: "
                f"{type(error).__name__}: {_without_addresses(str(error))}",
            ) from error
        if buffer.tell() != len(data):
            raise SchemaDecodeError(
                "undecodable", f"{len(data) - buffer.tell()} trailing bytes after the record"
            )
        return record

    def _writer_of(self, data: bytes) -> SchemaVersion:
        if data is None or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise SchemaDecodeError("bad_header", "not Avro single-object encoding (C3 01 header)")
        writer = self.registry.by_fingerprint(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise SchemaDecodeError(
                "unknown_fingerprint",
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}",
            )
        if writer.name != self.name:
            raise SchemaDecodeError(
                "wrong_schema",
                f"expected a {self.name} record, got {writer.name} v{writer.version}",
            )
        return writer
