"""Avro schema-resolution compatibility checks, run before a new schema version is released.

``problems(reader, writer)`` lists why data written with ``writer`` could not be read with
``reader`` under the Avro resolution rules (empty list: compatible). Producers and consumers
upgrade separately, so a release must be *fully* compatible: the new version reads every old
one (backward) and every old one reads the new (forward).

Example::

    >>> old = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    >>> new = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"},
    ...        {"name": "b", "type": ["null", "string"], "default": None}]}
    >>> problems(reader=new, writer=old), problems(reader=old, writer=new)
    ([], [])
"""

from __future__ import annotations

from typing import Any

from fastavro.schema import expand_schema, parse_schema

from schemas.registry import SchemaRegistry, strip_logical_types

_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _expanded(schema: Any) -> Any:
    return expand_schema(parse_schema(strip_logical_types(schema), _write_hint=False))


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return schema["type"]
    return schema


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _named_like(a: Any, b: Any) -> bool:
    return (
        isinstance(a, dict)
        and isinstance(b, dict)
        and "name" in a
        and "name" in b
        and (_short(a["name"]) == _short(b["name"]))
    )


def problems(reader: Any, writer: Any) -> list[str]:
    """Why ``reader`` cannot read data written with ``writer`` (empty when it can)."""
    return _check(_expanded(reader), _expanded(writer), "$")


def _check(reader: Any, writer: Any, path: str) -> list[str]:
    r_type, w_type = _type_name(reader), _type_name(writer)
    if w_type == "union":
        return [p for i, branch in enumerate(writer) for p in _check(reader, branch, f"{path}|{i}")]
    if r_type == "union":
        if any(not _check(branch, writer, path) for branch in reader):
            return []
        # Name the real cause when the union holds a record of the same name.
        same_name = [b for b in reader if _named_like(b, writer)]
        if same_name:
            return _check(same_name[0], writer, path)
        return [f"{path}: reader union has no branch that reads writer type {w_type}"]
    if r_type != w_type:
        if r_type in _PROMOTIONS.get(w_type, set()):
            return []
        return [f"{path}: writer type {w_type} cannot be read as {r_type}"]
    if r_type == "record":
        return _check_record(reader, writer, path)
    if r_type == "enum":
        return _check_enum(reader, writer, path)
    if r_type == "array":
        return _check(reader["items"], writer["items"], f"{path}[]")
    if r_type == "map":
        return _check(reader["values"], writer["values"], f"{path}{{}}")
    if r_type == "fixed" and reader["size"] != writer["size"]:
        return [f"{path}: fixed size {writer['size']} cannot be read as size {reader['size']}"]
    return []


def _check_record(reader: dict, writer: dict, path: str) -> list[str]:
    reader_names = {_short(reader["name"]), *map(_short, reader.get("aliases", []))}
    if _short(writer["name"]) not in reader_names:
        return [f"{path}: record {writer['name']} cannot be read as {reader['name']}"]
    writer_fields = {field["name"]: field for field in writer["fields"]}
    found: list[str] = []
    for field in reader["fields"]:
        names = [field["name"], *field.get("aliases", [])]
        source = next((writer_fields[n] for n in names if n in writer_fields), None)
        field_path = f"{path}.{field['name']}"
        if source is not None:
            found += _check(field["type"], source["type"], field_path)
        elif "default" not in field:
            found.append(f"{field_path}: new field without a default")
    return found


def _check_enum(reader: dict, writer: dict, path: str) -> list[str]:
    missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
    if missing and "default" not in reader:
        return [f"{path}: enum symbols {missing} unknown to the reader and no default"]
    return []


def release_problems(registry: SchemaRegistry) -> list[str]:
    """Every pair of released versions of a schema must read each other."""
    found = []
    for name in registry.names():
        versions = registry.versions(name)
        for i, newer in enumerate(versions):
            for older in versions[:i]:
                for reader, writer in ((newer, older), (older, newer)):
                    found += [
                        f"{name} v{reader.version} reading v{writer.version}: {p}"
                        for p in problems(reader.raw, writer.raw)
                    ]
    return found
