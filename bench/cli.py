"""Benchmark how fast the CLI starts and answers: the median of N runs of `--help`,
`incidents list` and `status`, each a fresh process, on both of their paths: the running
daemon answering (its read API), and the database read in the command's own process
(`--direct`, or no daemon listening). Measured in the same run: `python -c pass` (the
interpreter's floor) and `python -c "import sqlalchemy.orm"` (the direct path's floor: a
command that reads the database through the models cannot start sooner).

    .venv/bin/python bench/cli.py [--runs N]

A migrated SQLite database with three incidents beside a small config in a temporary
folder; the daemon is the real one (`reliability daemon`) on a free loopback port.
Target: <= 0.35 s for `incidents list` and `status` while the daemon answers, as on-call
types them; the direct rows show the same target against their floor.
The commands run with Python's bytecode cache on, as an installed tool runs (pip compiles a
wheel's modules when it installs them): an inherited PYTHONDONTWRITEBYTECODE would compile
every module of the package from source at every call, and is left out.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reliability import readapi
from reliability.cli_support import from_daemon, load_config
from reliability.testing.loopback import free_port

TARGET = 0.35
READY_WITHIN = 60.0


def _median(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _start_daemon(reliability: list[str], config: Path, env: dict[str, str], log: Path):
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            [*reliability, "daemon"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    loaded = load_config(config)
    deadline = time.monotonic() + READY_WITHIN
    while from_daemon(loaded, readapi.STATUS_PATH) is None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            sys.exit(f"the daemon did not answer within {READY_WITHIN:g}s:\n{log.read_text()}")
        time.sleep(0.2)
    return daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "reliability.yaml"
        config.write_text(f"http:\n  listen: 127.0.0.1:{free_port()}\nrules:\n  builtin: false\n")
        env = {**os.environ, "RELIABILITY_CONFIG": str(config)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        reliability = [python, "-m", "reliability"]
        subprocess.run([*reliability, "db", "upgrade"], env=env, check=True, capture_output=True)
        for title in ("gpu-1 GPU 3 fell off the bus", "gpu-2 at 91°C", "chat: 5xx at 4%"):
            opened = [*reliability, "incidents", "open", title, "--severity", "warning"]
            subprocess.run(opened, env=env, check=True, capture_output=True)
        floors = [
            ("python -c pass", [python, "-c", "pass"], None),
            ("python -c 'import sqlalchemy.orm'", [python, "-c", "import sqlalchemy.orm"], None),
            ("reliability --help", [*reliability, "--help"], TARGET),
        ]
        direct = [
            ("incidents list --direct", [*reliability, "incidents", "list", "--direct"], TARGET),
            ("status --direct", [*reliability, "status", "--direct"], TARGET),
        ]
        answered = [
            ("incidents list", [*reliability, "incidents", "list"], TARGET),
            ("status", [*reliability, "status"], TARGET),
        ]
        rows: list[tuple[str, str, float, float | None]] = []
        for name, argv, target in floors:
            rows.append(("floor", name, _median(argv, runs, env), target))
        for name, argv, target in answered:  # refused at once, then the database
            rows.append(("no daemon", name, _median(argv, runs, env), target))
        daemon = _start_daemon(reliability, config, env, Path(folder) / "daemon.log")
        try:
            for name, argv, target in answered:
                rows.append(("daemon answers", name, _median(argv, runs, env), target))
            for name, argv, target in direct:
                rows.append(("daemon up, --direct", name, _median(argv, runs, env), target))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    print(f"CLI start, median of {runs} runs ({os.cpu_count()} CPUs)")
    print(f"{'path':<20} {'command':<34} {'seconds':>8} {'target':>8}  met")
    for path, name, seconds, target in rows:
        shown = f"{target:.2f}" if target else "-"
        met = "" if target is None else ("yes" if seconds <= target else "NO")
        print(f"{path:<20} {name:<34} {seconds:>8.3f} {shown:>8}  {met}")
    print(
        "The direct path imports SQLAlchemy's ORM and the models: it cannot start sooner "
        "than the floor above; the daemon's path imports neither."
    )


if __name__ == "__main__":
    main()
