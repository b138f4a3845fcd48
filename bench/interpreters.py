"""``bench.processor`` on several Pythons in one run (issue #17): is the scorer as fast on the
interpreters users have (Ubuntu 24.04's 3.12, Debian 13's 3.13) as on 3.11?

::

    python -m bench.interpreters --rounds 3 --json
    python -m bench.interpreters --python .venv/bin/python --python .venv-py3.13/bin/python

Each interpreter is a virtualenv with this checkout installed (``make setup PY=python3.12
VENV=.venv-py3.12`` builds one; by default every ``.venv*/bin/python`` here is used). One model
is trained once and every interpreter scores the same book with it. The runs are interleaved
round by round (3.11, 3.12, 3.13, 3.11, ...), so a machine that gets busier or quieter during
the run moves every interpreter alike; the figure is each interpreter's median events/s and its
ratio to the first interpreter's median. Each run also names the kernels it ran, so a ratio
that comes from a kernel falling back to its Python reference is visible as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.common import ROOT, train_small_model


def default_pythons() -> list[Path]:
    """Every virtualenv interpreter in the checkout, ``.venv`` (the README's) first."""
    found = sorted(ROOT.glob(".venv*/bin/python"), key=lambda p: (p.parts[-3] != ".venv", p))
    return [p for p in found if p.exists()]


def run_one(python: Path, model: Path, loans: int) -> dict:
    """One ``bench.processor --json`` run of ``python`` on ``model``."""
    command = [str(python), "-m", "bench.processor", "--json", "--loans", str(loans)]
    completed = subprocess.run(
        [*command, "--model", str(model)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout)


def compare(pythons: list[Path], model: Path, loans: int, rounds: int) -> dict:
    """Interleaved runs; per interpreter its median events/s, its ratio to the first one's,
    and the kernels it ran."""
    runs: dict[Path, list[dict]] = {python: [] for python in pythons}
    for _ in range(rounds):
        for python in pythons:
            runs[python].append(run_one(python, model, loans))
    base = statistics.median(r["processor_eps"] for r in runs[pythons[0]])
    result = []
    for python, figures in runs.items():
        median = statistics.median(r["processor_eps"] for r in figures)
        result.append(
            {
                "python": figures[0]["python"],
                "interpreter": str(python),
                "kernels": figures[0]["kernels"],
                "processor_eps": [round(r["processor_eps"]) for r in figures],
                "median_eps": round(median),
                "ratio_to_first": round(median / base, 3),
            }
        )
    return {"loans": loans, "rounds": rounds, "interpreters": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python",
        type=Path,
        action="append",
        help="an interpreter with this checkout installed (repeat; default: every .venv*)",
    )
    parser.add_argument("--model", type=Path, help="bundle directory (default: train one)")
    parser.add_argument("--loans", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pythons = args.python or default_pythons()
    if not pythons:
        parser.error("no interpreter: pass --python, or make one with `make setup PY=...`")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_small_model(Path(tmp))
        figures = compare(pythons, model, args.loans, args.rounds)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for row in figures["interpreters"]:
        print(
            f"Python {row['python']}: median {row['median_eps']:,} ev/s "
            f"({row['ratio_to_first']:.2f}x), runs {row['processor_eps']}, "
            f"kernels {row['kernels']}"
        )


if __name__ == "__main__":
    main()
