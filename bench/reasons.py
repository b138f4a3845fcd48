"""What reasons cost the processor: ``bench.processor.run_processor`` with the emitted records'
reasons and policy rule on, and with them off (``PartitionProcessor._reasons`` and
``Policy.rule`` stubbed), interleaved in one process on the same records and bundle, so a
shared machine's load falls on both alike::

    python -m bench.reasons --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import consumer.processor as processor
from bench.common import train_small_model
from bench.processor import encoded_records, run_processor
from models.serving.policy import Policy

_REASONS, _RULE = processor.PartitionProcessor._reasons, Policy.rule


def _reasons_on(on: bool) -> None:
    processor.PartitionProcessor._reasons = _REASONS if on else (lambda self, *a: {})  # type: ignore[method-assign]
    Policy.rule = _RULE if on else (lambda self, *a: None)  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = train_small_model(Path(tmp))
        records = encoded_records(args.loans)
        for _ in range(args.repeats):
            for name in runs:
                _reasons_on(name == "on")
                runs[name].append(run_processor(model, records))
    _reasons_on(True)
    print(
        json.dumps(
            {
                name: {
                    "eps_median": round(statistics.median(r["processor_eps"] for r in rs)),
                    "decide_us_median": statistics.median(r["per_event_us"]["decide"] for r in rs),
                }
                for name, rs in runs.items()
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
