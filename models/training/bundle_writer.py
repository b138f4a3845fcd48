"""Writing a model bundle (the loader that verifies it is :mod:`models.serving.bundle`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.serving.bundle import FORMAT, METADATA_FILE, MODEL_FILE, content_version, sha256_file
from models.serving.skops_io import skops_io


def write_bundle(
    directory: str | Path,
    model: Any,
    metadata: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Save ``model``, ``extra_files`` and ``metadata`` (which records every file's hash) into
    ``directory``; returns the bundle version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skops_io().dump(model, directory / MODEL_FILE)
    for name, content in (extra_files or {}).items():
        (directory / name).write_bytes(content)
    metadata = dict(metadata)
    metadata["format"] = FORMAT
    metadata["files"] = {
        name: sha256_file(directory / name) for name in (MODEL_FILE, *(extra_files or {}))
    }
    metadata["version"] = content_version(metadata)
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=True)
    (directory / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    return metadata["version"]
