"""All released versions of every schema, found by name or by writer fingerprint.

Schemas live in ``schemas/avro/<Name>/v<N>.avsc``; a release never edits a file, it adds the
next version. Logical types are dropped when parsing for the runtime: values travel as their
underlying primitives (timestamps as epoch milliseconds, dates as days since the epoch), which
keeps decoding cheap and deterministic. The Parsing Canonical Form ignores logical types, so
fingerprints are unaffected.

Example::

    >>> registry = default_registry()
    >>> registry.latest("LoanEvent").version >= 1
    True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

AVRO_DIR = Path(__file__).resolve().parent / "avro"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    path: Path
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes  # 8 bytes, CRC-64-AVRO of the Parsing Canonical Form, little-endian


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` with every ``logicalType`` removed (values stay primitives)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(item) for item in schema]
    return schema


def load_schema_version(name: str, version: int, path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(strip_logical_types(raw))
    canonical = to_parsing_canonical_form(parsed)
    return SchemaVersion(
        name=name,
        version=version,
        path=path,
        raw=raw,
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


class SchemaRegistry:
    """A file-based registry of schema versions (no schema-registry service needed)."""

    def __init__(self, roots: tuple[Path, ...] = (AVRO_DIR,)) -> None:
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for root in roots:
            for path in sorted(Path(root).glob("*/v*.avsc")):
                match = _VERSION_FILE.match(path.name)
                if match:
                    self.add(load_schema_version(path.parent.name, int(match.group(1)), path))

    def add(self, schema: SchemaVersion) -> None:
        self._versions.setdefault(schema.name, {})[schema.version] = schema
        self._by_fingerprint[schema.fingerprint] = schema

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[SchemaVersion]:
        if name not in self._versions:
            raise KeyError(f"no schema named {name!r}; known: {', '.join(self.names())}")
        return [self._versions[name][v] for v in sorted(self._versions[name])]

    def get(self, name: str, version: int | None = None) -> SchemaVersion:
        versions = self.versions(name)
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise KeyError(f"schema {name!r} has no version {version}")

    def latest(self, name: str) -> SchemaVersion:
        return self.get(name)

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)


@cache
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()
