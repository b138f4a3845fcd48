"""The scorer of another revision against this one, end to end, in one interleaved run.

A figure that moved between two ``make bench`` runs may be the code or the machine: the host
changes between sessions, and the 2 cores are shared. This puts both revisions' ``serve
--guarantee exactly-once`` on the same pre-produced input, on one broker, alternating, with the
transactional passthrough between them, and reports for each run

- ``eps``: events/s between 20 % and 95 % of the input committed (start-up excluded);
- ``cpu_us_per_event``: the scorer process's CPU time (all its threads) over the same span per
  event, which other load on the machine distorts less than wall-clock rates.

Each revision reads the same book as written by its own ``produce`` (an older revision reads
only its own LoanEvent version; this one reads earlier ones too, but through the Python
reference: measured 2026-12-01, v1 records cost this revision ~4x the CPU of its own v3), and
scores with a bundle it trained itself (``bench.common.train_small_model``).

The base revision needs a checkout with its kernels built in place, e.g. for ``afea59d``::

    git worktree add --detach /tmp/base afea59d
    python -m venv /tmp/cython && /tmp/cython/bin/pip install -q Cython numpy setuptools
    (cd /tmp/base && mv pyproject.toml /tmp/pp.toml &&
     PYTHONPATH=$(echo /tmp/cython/lib/python3*/site-packages) \\
       .venv/bin/python setup.py build_ext --inplace; mv /tmp/pp.toml pyproject.toml)

(run from this checkout, so ``.venv/bin/python`` is this project's interpreter; the
pyproject.toml of older revisions does not validate with today's setuptools, and setup.py
alone builds the kernels).

    python -m bench.revisions --base-tree /tmp/base --rounds 2 [--json] [--write]

``--write`` saves the runs to docs/revisions.json, which ``make bench`` renders as the last
section of docs/BENCHMARKS.md.

Measured on 2026-12-01 (docs/BENCHMARKS.md, "Same-run comparison"): afea59d, whose own
``make bench`` gave 100,136 events/s (0.69 x passthrough) on 2026-11-23, ran at 31-32k events/s
here, next to this revision's 32-42k and a passthrough of 114-116k.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    PARTITIONS,
    ROOT,
    benchmark_broker,
    create_topics,
    end_offsets,
    standalone_parser,
    stop_process,
)

# Run inside a revision's checkout (its own bench.common): train its bundle, create its
# output topics and print its scorer command.
_COMMAND = """
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from bench.common import scorer_command, train_small_model
bootstrap, topic, group, model, work = sys.argv[1:6]
if model == "-":
    model = str(train_small_model(Path(work)))
command = scorer_command(bootstrap, Path(model), topic, group, "exactly-once")
print(json.dumps([model, command]))
"""
FROM, TO = 0.20, 0.95  # the span of the input the figures cover
RESULTS = ROOT / "docs" / "revisions.json"


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid``, all threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch(bootstrap: str, group: str, topic: str, process: subprocess.Popen) -> dict[str, float]:
    """Sample the group's committed total and the process's CPU until the input is done."""
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = [TopicPartition(topic, p) for p in ends]
    samples: list[tuple[float, int, float]] = []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            exited = process.poll()
            if exited not in (None, 0):
                raise RuntimeError(f"the run of group {group} exited {exited}")
            done = sum(max(tp.offset, 0) for tp in watcher.committed(partitions, timeout=10))
            # The passthrough exits once it has committed the end: its CPU is the last read.
            cpu = _cpu_s(process.pid) if exited is None else samples[-1][2]
            samples.append((time.monotonic(), done, cpu))
            if done >= total:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"group {group} did not finish {topic}")
    finally:
        watcher.close()
    a = next(s for s in samples if s[1] >= FROM * total)
    b = next(s for s in samples if s[1] >= TO * total)
    return {
        "eps": (b[1] - a[1]) / (b[0] - a[0]),
        "cpu_us_per_event": 1e6 * (b[2] - a[2]) / (b[1] - a[1]),
    }


def run(base: Path, rounds: int, loans: int, bootstrap_servers: str | None = None) -> list[dict]:
    python = sys.executable
    trees = {"base": base, "this": ROOT}
    results: list[dict] = []
    with benchmark_broker(bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def cli(tree: Path, *args: str) -> None:
            command = [python, "-m", "loan_recovery.cli", *args]
            subprocess.run(command, cwd=tree, check=True, capture_output=True)

        cli(base, "generate", "--loans", str(loans), "--seed", "11", "--out", str(work / "book"))
        events = str(work / "book" / "events.jsonl")
        # The same book, written once by each revision's own `produce` (its own LoanEvent
        # version): read by this revision, an older version's records take the reference path.
        topics: dict[str, str] = {}
        for who, tree in trees.items():
            topics[who] = f"revisions.{who}.{uuid.uuid4().hex[:6]}"
            create_topics(bootstrap, [topics[who]], PARTITIONS)
            cli(
                tree,
                "produce",
                "--source",
                "events",
                "--input",
                events,
                "--topic",
                topics[who],
                "--bootstrap-servers",
                bootstrap,
                "--no-progress",
            )
        models: dict[str, str] = {}
        for i in range(rounds):
            order = (
                ("base", "this", "passthrough") if i % 2 == 0 else ("this", "base", "passthrough")
            )
            for who in order:
                group = f"revisions-{who}-{uuid.uuid4().hex[:6]}"
                topic = topics["this" if who == "passthrough" else who]
                if who == "passthrough":
                    total = str(sum(end_offsets(bootstrap, topic).values()))
                    command = [python, "-m", "bench.passthrough", "--bootstrap-servers"]
                    command += [bootstrap, "--topic", topic, "--events", total, "--group-id", group]
                    cwd = ROOT
                else:
                    cwd = trees[who]
                    printed = subprocess.run(
                        [
                            python,
                            "-c",
                            _COMMAND,
                            bootstrap,
                            topic,
                            group,
                            models.get(who, "-"),
                            str(work / who),
                        ],
                        cwd=cwd,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    models[who], command = json.loads(printed.strip().splitlines()[-1])
                process = subprocess.Popen(
                    command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                try:
                    figures = watch(bootstrap, group, topic, process)
                finally:
                    stop_process(process)
                results.append({"round": i, "run": who, **figures, "load": os.getloadavg()[0]})
    return results


def _revision(tree: Path) -> str:
    return subprocess.run(
        ["git", "log", "-1", "--format=%h %ad", "--date=short"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip() or str(tree)


def section(path: Path = RESULTS) -> list[str]:
    """The "Same-run comparison" section of docs/BENCHMARKS.md (``bench.run_all``), from the
    last ``bench.revisions --write``; empty if there is none."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    lines = [
        "",
        "## Same-run comparison with an earlier revision",
        "",
        f"`python -m bench.revisions --base-tree <checkout of {saved['base']}> --rounds "
        f"{saved['rounds']} --write` on {saved['date']} ({saved['this']} against "
        f"{saved['base']}; a separate run from the figures above). Both revisions' "
        "exactly-once scorer, and the passthrough, on one pre-produced book (written by each "
        "revision's own `produce`), on one broker, alternating; events/s and the scorer's CPU "
        "per event between 20 % and 95 % of the input committed.",
        "",
        "| round | run | events/s | CPU µs/event | load |",
        "|---:|---|---:|---:|---:|",
        *(
            f"| {r['round']} | {r['run']} | {r['eps']:,.0f} | {r['cpu_us_per_event']:.1f} "
            f"| {r['load']:.1f} |"
            for r in saved["results"]
        ),
    ]
    if saved.get("finding"):
        lines += ["", saved["finding"]]
    return lines


def main() -> None:
    parser = standalone_parser(__doc__)
    parser.add_argument("--base-tree", type=Path, required=True, help="the other revision")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loans", type=int, default=20_000)
    parser.add_argument("--write", action="store_true", help=f"save to {RESULTS.name}")
    parser.add_argument("--finding", default="", help="a sentence saved with --write")
    args = parser.parse_args()
    base = args.base_tree.resolve()
    results = run(base, args.rounds, args.loans, args.bootstrap_servers)
    if args.write:
        saved = {
            "base": _revision(base),
            "this": _revision(ROOT),
            "date": time.strftime("%Y-%m-%d"),
            "rounds": args.rounds,
            "results": results,
            "finding": args.finding,
        }
        RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"round {r['round']} {r['run']:<11} {r['eps']:>9,.0f} events/s "
            f"{r['cpu_us_per_event']:6.1f} us CPU/event (load {r['load']:.1f})"
        )


if __name__ == "__main__":
    main()
