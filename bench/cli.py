"""Benchmark how fast the CLI starts: the median of N runs of `--help`, `incidents list`
and `status`, each a fresh process, against `python -c pass` and `python -c "import
sqlalchemy.orm"` measured in the same run (the interpreter's floor and the database
layer's: a command that reads the database through the models cannot start sooner).

    .venv/bin/python bench/cli.py [--runs N]

`incidents list` and `status` read a migrated SQLite database beside a small config in a
temporary folder; `status` finds no daemon at its /metrics address (127.0.0.1, a closed
port) and says so, as it would with the daemon stopped. Target: <= 0.35 s each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.35


def _median(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "reliability.yaml"
        config.write_text("http:\n  listen: 127.0.0.1:9\n")
        env = {**os.environ, "RELIABILITY_CONFIG": str(config)}
        reliability = [python, "-m", "reliability"]
        subprocess.run([*reliability, "db", "upgrade"], env=env, check=True, capture_output=True)
        rows = [
            ("python -c pass", [python, "-c", "pass"], None),
            ("python -c 'import sqlalchemy.orm'", [python, "-c", "import sqlalchemy.orm"], None),
            ("reliability --help", [*reliability, "--help"], TARGET),
            ("reliability incidents list", [*reliability, "incidents", "list"], TARGET),
            ("reliability status", [*reliability, "status"], TARGET),
        ]
        print(f"CLI start, median of {runs} runs ({os.cpu_count()} CPUs)")
        print(f"{'command':<32} {'seconds':>8} {'target':>8}  met")
        for name, argv, target in rows:
            seconds = _median(argv, runs, env)
            shown = f"{target:.2f}" if target else "-"
            met = "" if target is None else ("yes" if seconds <= target else "NO")
            print(f"{name:<32} {seconds:>8.3f} {shown:>8}  {met}")


if __name__ == "__main__":
    main()
