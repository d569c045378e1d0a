"""Benchmark the runbook engine: a trivial command on 50 hosts against Ansible, and the
load balancer's switch time.

    .venv/bin/python bench/runbook.py [--runs N] [--nodes K] [--skip-ansible]
                                      [--switches N] [--cold-switches N]

Fan-out: a rig fleet of 50 nodes (real sshd on 50 loopback addresses, strict host keys) and
a runbook with one `ssh` step, `command: "true"`, on a target group of all of them (pool
`bench`), run by the real engine (`Executor.run`, SQLite, every unit recorded):
- cold: a new Executor and SshPool per run, so the 50 connections (key exchange, auth) count,
  and closing them; the figure held to the target;
- warm: one SshPool shared by the runs (after one run not counted): the daemon's case;
- CLI: `python -m reliability runbook run NAME --yes` as a subprocess, cold, so the
  interpreter's start and the imports count, as they do for `ansible`.
Ansible (`ansible-core`, when installed) ad-hoc on the same hosts, key and known_hosts with
strict host key checking, `-f 50 -m command -a true`, as a subprocess:
- defaults: Ansible's own ssh_args (ControlMaster=auto, ControlPersist) plus the host key
  options, no pipelining, a fresh ControlPath directory per run (cold: like ours);
- tuned: pipelining on and the ControlPersist masters of an earlier run reused (warm).
Target: the engine cold >= 10x faster than Ansible with its defaults (medians).

Switch: pools blue and green (two nodes each, an inference stand-in on each answering with
an `x-pool` header) behind the rig's real nginx on node `lb-1`; a runbook with the single
step `lb_set_pool` (save and write the upstream over SSH, `nginx -t`, graceful reload,
check the LB url answers 200) switches the service between the pools, back and forth. A
client polls the LB every 10 ms on a new connection each time (`GET /v1/models`) and dates
the first answer from the new pool, and the first after which only the new pool answered
(nginx's old workers still route for a moment after a reload). Clock points, one wall
clock: the step's start as recorded in
`runbook_steps`, and when `Executor.run` was called. Warm: one SshPool kept across the
switches (as the daemon keeps it); cold: a new pool per switch (SSH connect to the LB
counts). Target: the step's start to the new pool serving < 1 s, every switch (max).
Needs root (the fleet's login user); all traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.runbooks import params
from reliability.runbooks.executor import Executor
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookStep, RunStatus
from reliability.runbooks.spec import Runbook
from reliability.ssh import SshPool, target_for
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.nginx import NginxBalancer
from reliability.testing.nginx import missing_requirement as nginx_missing

NODES = 50
RUNS = 5
SWITCHES = 10
COLD_SWITCHES = 4
TARGET_SPEEDUP = 10.0
TARGET_SWITCH_S = 1.0
CONNECT_TIMEOUT_S = 10.0
ANSIBLE_TIMEOUT_S = 180.0
CLI_TIMEOUT_S = 60.0
POLL_EVERY_S = 0.01
SWITCH_TIMEOUT_S = 15.0
# After the first answer from the new pool, keep polling this long for a late old one.
TAIL_S = 0.3
SETTLE_TIMEOUT_S = 5.0
LOGIN_PYTHON = "/usr/bin/python3"
IMAGE = "vllm/vllm-openai:v0.6.0"
SERVICE = "chat"
LB_NODE = "lb-1"
POOLS = {"blue-1": "blue", "blue-2": "blue", "green-1": "green", "green-2": "green"}
FANOUT = "fanout"
SWITCH = "lb-switch"
INSTALL = ".venv/bin/pip install 'ansible-core>=2.17'  (or: pip install -e '.[bench]')"

FANOUT_BOOK = {
    "description": "A trivial command on every node of pool bench (bench/runbook.py).",
    "targets": {"all": {"pool": "bench"}},
    "steps": [{"id": "noop", "action": "ssh", "nodes": "all", "args": {"command": "true"}}],
}
SWITCH_BOOK = {
    "description": "Switch a service's load balancer to a pool, nothing else (bench/runbook.py).",
    "params": {"service": {"type": "service"}, "pool": {"type": "pool", "of": "service"}},
    "steps": [
        {
            "id": "switch",
            "action": "lb_set_pool",
            "args": {"service": "{service}", "pool": "{pool}"},
            "timeout": "30s",
            "undo": "restore",
        }
    ],
}


class BenchFailed(Exception):
    """A run did not do what it should; the message says which and why."""


@dataclass
class Row:
    case: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    verdict: str = ""


# --- shared set-up ---------------------------------------------------------------------------


def write_setup(
    directory: Path, sections: dict[str, Any], books: dict[str, dict[str, Any]]
) -> tuple[Config, sa.Engine, Path]:
    """A config, its runbooks dir and a migrated SQLite database in `directory`."""
    (directory / "runbooks").mkdir(parents=True)
    for name, book in books.items():
        (directory / "runbooks" / f"{name}.yaml").write_text(yaml.safe_dump(book, sort_keys=False))
    url = f"sqlite:///{directory / 'reliability.db'}"
    path = directory / "reliability.yaml"
    document = {"database": {"url": url}, **sections, "runbooks_dir": "runbooks"}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    db.upgrade(url)
    return load_config(path), db.make_engine(url), path


def prepare(config: Config, name: str, given: dict[str, str]) -> tuple[Runbook, dict[str, Any]]:
    """The runbook `name` of the config's runbooks dir and its checked parameters."""
    book = load_runbooks(config)[name]
    return book, params.resolve(book, given, config)


def run_book(
    config: Config, engine: sa.Engine, book: Runbook, values: dict[str, Any], **kw: Any
) -> int:
    """One run through the real engine; its id. BenchFailed unless it succeeded."""
    runner = Executor(config, engine, **kw)
    try:
        result = runner.run(book, values, actor="bench")
    finally:
        runner.close()
    if result.status != RunStatus.succeeded:
        raise BenchFailed(f"run {result.run_id} of {book.name} {result.status}: {result.reason}")
    return result.run_id


def timed(action: Callable[[], object], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return seconds


# --- fan-out: our engine -------------------------------------------------------------------------


def engine_rows(fleet: Fleet, directory: Path, runs: int) -> list[Row]:
    sections = fleet.config_sections(connect_timeout=CONNECT_TIMEOUT_S)
    config, engine, path = write_setup(directory, sections, {FANOUT: FANOUT_BOOK})
    book, values = prepare(config, FANOUT, {})
    try:
        cold = timed(lambda: run_book(config, engine, book, values), runs)
        pool = SshPool()
        try:
            run_book(config, engine, book, values, ssh=pool)  # connects: not counted
            warm = timed(lambda: run_book(config, engine, book, values, ssh=pool), runs)
        finally:
            pool.close()
        with engine.connect() as conn:
            units = conn.execute(
                sa.select(sa.func.count())
                .select_from(RunbookStep)
                .where(RunbookStep.status == "ok")
            ).scalar_one()
    finally:
        engine.dispose()
    if units != len(fleet.names) * (2 * runs + 1):
        raise BenchFailed(f"expected {len(fleet.names)} ok units per run, found {units} in all")
    command = [sys.executable, "-m", "reliability", "runbook", "run", FANOUT, "--yes"]
    cli = timed(lambda: subprocess_ok([*command, "-c", str(path)], CLI_TIMEOUT_S), runs)
    n = len(fleet.names)
    return [
        Row(f"engine, cold: Executor.run, {n} hosts, `true`", cold),
        Row("engine, warm SSH pool", warm),
        Row("engine, cold, CLI: `reliability runbook run --yes`", cli),
    ]


def subprocess_ok(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise BenchFailed(
            f"{shlex.join(argv[:6])} ... exited {done.returncode}:\n"
            + done.stdout[-2000:]
            + done.stderr[-2000:]
        )
    return done.stdout


# --- fan-out: Ansible ------------------------------------------------------------------------


def ansible_binary() -> str | None:
    beside = Path(sys.executable).parent / "ansible"
    return str(beside) if beside.exists() else shutil.which("ansible")


def ansible_cfg(fleet: Fleet, directory: Path, *, pipelining: bool) -> Path:
    inventory = directory / "inventory.ini"
    inventory.write_text(
        "[fleet]\n"
        + "".join(
            f"{n.name} ansible_host={n.address} ansible_port={n.port} ansible_user={fleet.user}\n"
            for n in fleet.nodes
        )
        + f"\n[all:vars]\nansible_python_interpreter={LOGIN_PYTHON}\n"
        + f"ansible_ssh_private_key_file={fleet.client_key_path}\n"
    )
    # Ansible's default ssh_args, with strict checking against the fleet's known_hosts.
    ssh_args = (
        "-C -o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={fleet.known_hosts_path} -o StrictHostKeyChecking=yes"
    )
    cfg = directory / "ansible.cfg"
    cfg.write_text(
        "[defaults]\n"
        f"inventory = {inventory}\n"
        "host_key_checking = True\n"
        "gathering = explicit\n"
        "retry_files_enabled = False\n"
        "forks = 50\n"
        f"local_tmp = {directory / 'local-tmp'}\n"
        f"interpreter_python = {LOGIN_PYTHON}\n"
        "[ssh_connection]\n"
        f"ssh_args = {ssh_args}\n"
        f"pipelining = {pipelining}\n"
    )
    return cfg


def ansible_once(binary: str, cfg: Path, control_dir: Path, hosts: int) -> None:
    control_dir.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cfg.parent),
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(cfg.parent / "home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
    }
    argv = [binary, "all", "-f", str(hosts), "-m", "command", "-a", "true"]
    out = subprocess_ok(argv, ANSIBLE_TIMEOUT_S, env)
    done = sum(" | CHANGED | rc=0" in line for line in out.splitlines())
    if done != hosts:
        raise BenchFailed(f"ansible ran `true` on {done} of {hosts} hosts:\n{out[-2000:]}")


def close_masters(control_dirs: list[Path]) -> None:
    """End the ControlPersist masters the runs left, through their sockets."""
    for directory in control_dirs:
        for socket_path in directory.glob("*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "bench"],
                capture_output=True,
                timeout=10,
                check=False,
            )


def ansible_rows(fleet: Fleet, directory: Path, runs: int) -> list[Row]:
    binary = ansible_binary()
    if binary is None:
        print(f"ansible not installed; to compare with it: {INSTALL}")
        return []
    hosts = len(fleet.names)
    cold_dir, warm_dir = directory / "defaults", directory / "tuned"
    cold_dir.mkdir(parents=True)
    warm_dir.mkdir()
    cold_cfg = ansible_cfg(fleet, cold_dir, pipelining=False)
    warm_cfg = ansible_cfg(fleet, warm_dir, pipelining=True)
    used: list[Path] = []
    try:
        cold = []
        for i in range(runs):
            used.append(directory / f"cp-{i}")
            cold += timed(lambda: ansible_once(binary, cold_cfg, used[-1], hosts), 1)
        used.append(directory / "cp-warm")
        ansible_once(binary, warm_cfg, used[-1], hosts)  # starts the masters: not counted
        warm = timed(lambda: ansible_once(binary, warm_cfg, used[-1], hosts), runs)
    finally:
        close_masters(used)
    return [
        Row(f"ansible {hosts} hosts -f {hosts} -m command, defaults, cold", cold),
        Row("ansible, pipelining, warm ControlPersist", warm),
    ]


def fanout(args: argparse.Namespace, directory: Path) -> list[Row]:
    names = [f"n{i:02d}" for i in range(args.nodes)]
    with Fleet(names, pools=dict.fromkeys(names, "bench")) as fleet:
        ours = engine_rows(fleet, directory / "engine", args.runs)
        theirs = [] if args.skip_ansible else ansible_rows(fleet, directory / "ansible", args.runs)
    cold = ours[0]
    if theirs:
        speedup = statistics.median(theirs[0].values) / statistics.median(cold.values)
        cold.target = f">= {TARGET_SPEEDUP:g}x ansible"
        cold.verdict = f"{'yes' if speedup >= TARGET_SPEEDUP else 'NO'} ({speedup:.1f}x)"
        warm = statistics.median(theirs[1].values) / statistics.median(ours[1].values)
        ours[1].verdict = f"({warm:.1f}x tuned ansible)"
        cli = statistics.median(theirs[0].values) / statistics.median(ours[2].values)
        ours[2].verdict = f"({cli:.1f}x ansible)"
    else:
        cold.target, cold.verdict = f">= {TARGET_SPEEDUP:g}x ansible", "? (no ansible)"
    return ours + theirs


# --- load-balancer switch ------------------------------------------------------------------------


@dataclass
class Switch:
    called_at: float  # just before Executor.run (wall clock)
    step_start: float  # the step's started_at, as recorded
    step_end: float
    seen_at: float  # the client received the first answer from the new pool
    only_new_at: float  # the first answer from the new pool after the last from the old
    ops: list[tuple[str, float]]  # each operation of the step, shortened, and its seconds
    errors: int


class Poller:
    """Asks the LB every 10 ms on a new connection; notes when each pool answered."""

    def __init__(self, url: str, want: str) -> None:
        self.url, self.want = url, want
        self.first: float | None = None
        self.streak: float | None = None  # first answer of the latest run of new-pool ones
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SWITCH_TIMEOUT_S)

    def _loop(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=2.0, limits=limits, trust_env=False) as client:
            deadline = time.monotonic() + SWITCH_TIMEOUT_S
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.get(self.url)
                    pool = r.headers.get("x-pool") if r.status_code == 200 else None
                    if pool is None:
                        self.errors.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    pool = None
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                now = time.time()
                if pool == self.want:
                    self.first = self.first or now
                    self.streak = self.streak or now
                elif pool is not None:
                    self.streak = None
                self._stop.wait(POLL_EVERY_S)

    def wait_seen(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.first is None and time.monotonic() < deadline:
            time.sleep(POLL_EVERY_S)
        if self.first is None:
            raise BenchFailed(f"the client saw no answer from pool {self.want} in {timeout:g}s")
        return self.first


def switch_once(
    config: Config, engine: sa.Engine, lb: NginxBalancer, to: str, pool: SshPool | None
) -> Switch:
    options = {} if pool is None else {"ssh": pool}
    book, values = prepare(config, SWITCH, {"service": SERVICE, "pool": to})
    with Poller(lb.url + "v1/models", to) as poller:
        called_at = time.time()
        run_id = run_book(config, engine, book, values, **options)
        poller.wait_seen(SWITCH_TIMEOUT_S)
        time.sleep(TAIL_S)
    with Session(engine) as session:
        step = session.scalars(sa.select(RunbookStep).where(RunbookStep.run_id == run_id)).one()
    if step.ended_at is None:
        raise BenchFailed(f"run {run_id}: its step has no end recorded")
    return Switch(
        called_at,
        step.started_at.timestamp(),
        step.ended_at.timestamp(),
        poller.wait_seen(0),
        poller.streak or poller.wait_seen(0),
        [(shorten(entry["detail"]), entry["seconds"]) for entry in step.log],
        len(poller.errors),
    )


def shorten(detail: str) -> str:
    """An operation's line without its paths and urls: `nginx -t -c …`."""
    words = ["…" if w.startswith(("/", "http")) else w for w in detail.split()]
    return " ".join(words)[:40]


def settle(lb: NginxBalancer) -> None:
    """Until the old generation of nginx workers has gone (bounded)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while set(lb.worker_pids()) != set(lb.serving_worker_pids()):
        if time.monotonic() > deadline:
            raise BenchFailed("old nginx workers still running 5 s after a reload")
        time.sleep(0.02)


def switch_rows(args: argparse.Namespace, directory: Path) -> list[Row]:
    reason = nginx_missing()
    if reason:
        print(f"no load-balancer switch: {reason}")
        return []
    with Fleet([*POOLS, LB_NODE], pools=POOLS) as fleet:
        for name in POOLS:
            fleet.run_container(name, IMAGE)
        blue = [f"{fleet.node(n).address}:8000" for n, p in POOLS.items() if p == "blue"]
        with NginxBalancer(fleet, LB_NODE, service=SERVICE, members=blue) as lb:
            sections = fleet.config_sections(connect_timeout=CONNECT_TIMEOUT_S)
            for node in sections["nodes"]:
                if node["name"] == LB_NODE:
                    node["role"] = "lb"
            service = {
                "name": SERVICE,
                "pools": ["blue", "green"],
                "active_pool": "blue",
                "load_balancer": lb.lb_config(SERVICE),
            }
            config, engine, _ = write_setup(
                directory, {**sections, "services": [service]}, {SWITCH: SWITCH_BOOK}
            )
            try:
                return measure_switches(config, engine, lb, args)
            finally:
                engine.dispose()


def each(switches: list[Switch], start: str, end: str) -> list[float]:
    """Seconds from one clock point to another, per switch."""
    return [getattr(s, end) - getattr(s, start) for s in switches]


def measure_switches(
    config: Config, engine: sa.Engine, lb: NginxBalancer, args: argparse.Namespace
) -> list[Row]:
    current, warm, cold = "blue", list[Switch](), list[Switch]()
    pool = SshPool()
    try:
        target = target_for(config, config.node(LB_NODE))
        pool.run(target, "true", timeout=CONNECT_TIMEOUT_S)  # connects: not counted
        for i in range(args.switches + args.cold_switches):
            current = "green" if current == "blue" else "blue"
            shared = pool if i < args.switches else None
            (warm if shared else cold).append(switch_once(config, engine, lb, current, shared))
            settle(lb)
    finally:
        pool.close()
    target = f"< {TARGET_SWITCH_S:g} s, max"
    rows = []
    for name, switches in (("warm SSH pool", warm), ("cold: new SshPool", cold)):
        if not switches:
            continue
        serving = each(switches, "step_start", "seen_at")
        met = max(serving) < TARGET_SWITCH_S and not any(s.errors for s in switches)
        verdict = "yes" if met else "NO"
        rows += [
            Row(f"switch, {name}: step start -> new pool serving", serving, target, verdict),
            Row(
                "  Executor.run called -> new pool serving", each(switches, "called_at", "seen_at")
            ),
            Row(
                "  step start -> only the new pool answers",
                each(switches, "step_start", "only_new_at"),
            ),
            Row(
                "  step duration (recorded; ends after the LB check)",
                each(switches, "step_start", "step_end"),
            ),
        ]
        labels = [label for label, _ in switches[0].ops]
        same = all([label for label, _ in s.ops] == labels for s in switches)
        if name.startswith("warm") and same:
            for i, label in enumerate(labels):
                rows.append(Row(f"    op: {label}", [s.ops[i][1] for s in switches]))
        errors = sum(s.errors for s in switches)
        if errors:
            rows.append(Row(f"  FAILED client requests: {errors}", [], "0", "NO"))
    return rows


# --- report ------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    headers = ("case", "runs", "median s", "best s", "max s", "target", "verdict")
    lines = [
        (
            r.case,
            str(len(r.values)),
            *(
                (
                    f"{statistics.median(r.values):.3f}",
                    f"{min(r.values):.3f}",
                    f"{max(r.values):.3f}",
                )
                if r.values
                else ("", "", "")
            ),
            r.target,
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]
    for line in [headers, *lines]:
        print(
            "  ".join(
                c.ljust(w) if i in (0, 5, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"per fan-out case ({RUNS})")
    parser.add_argument("--nodes", type=int, default=NODES, help=f"fan-out hosts ({NODES})")
    parser.add_argument("--switches", type=int, default=SWITCHES, help=f"warm ({SWITCHES})")
    parser.add_argument(
        "--cold-switches", type=int, default=COLD_SWITCHES, help=f"cold ({COLD_SWITCHES})"
    )
    parser.add_argument("--skip-ansible", action="store_true")
    args = parser.parse_args(argv)
    reason = missing_requirement()
    if reason:
        raise SystemExit(f"no rig here: {reason}")
    if os.geteuid() != 0:
        raise SystemExit("needs root: the fleet logs in a user of its own (relrig)")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="reliability-bench-") as name:
        directory = Path(name)
        (directory / "fanout").mkdir()
        (directory / "switch").mkdir()
        try:
            rows += fanout(args, directory / "fanout")
            rows += switch_rows(args, directory / "switch")
        except BenchFailed as exc:
            print_table(rows)
            print(f"bench failed: {exc}")
            return 1
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, SQLite, "
        f"OpenSSH {ssh_version()}"
    )
    print_table(rows)
    print(
        "fan-out: wall time of one run (ours: Executor built, run, closed; ansible and the CLI:"
        " the subprocess).\nswitch: clock points on one wall clock; the client polls"
        f" {POLL_EVERY_S * 1000:g} ms apart, a new connection each time."
    )
    # A target that could not be measured here (no Ansible) is not held against the run.
    verdicts = [r.verdict for r in rows if r.target and not r.verdict.startswith("?")]
    return 0 if verdicts and all(v.startswith("yes") for v in verdicts) else 1


def ssh_version() -> str:
    done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return done.stderr.strip().split(",")[0].removeprefix("OpenSSH_")


if __name__ == "__main__":
    sys.exit(main())
