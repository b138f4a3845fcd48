"""Structured logs: one JSON line per event of interest on stderr (never per message).

Example::

    >>> import io
    >>> out = io.StringIO()
    >>> log_event("metrics_listening", stream=out, port=9108)
    >>> '"event": "metrics_listening"' in out.getvalue() and '"port": 9108' in out.getvalue()
    True
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


def log_event(event: str, level: str = "info", stream: TextIO | None = None, **fields: Any) -> None:
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "level": level,
        "logger": "loanrec.serve",
        "event": event,
        **fields,
    }
    out = stream or sys.stderr
    out.write(json.dumps(record, default=str) + "\n")
    out.flush()
