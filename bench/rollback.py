"""Benchmark image-rollback: a bad build on every node of a pool, rolled back to the
known-good digest by the shipped runbook while clients keep sending requests through nginx.

    .venv/bin/python bench/rollback.py [--nodes N] [--runs R]

The rig: N nodes (default 4) in pool blue, each serving an inference stand-in in container
`vllm` through the docker stand-in over real sshd, behind the rig's real nginx on `lb-1`.
Each run deploys a build whose completions answer 500 on every node (by hand, as a bad
release would), then runs `image-rollback` (the shipped file, through the real engine,
SQLite, the known-good image from the images registry; its confirm step answered yes) while
a client sends chat completions through nginx one after another, every other one
streamed. Measured: seconds from the run's start to its end (every node on the known-good
digest, drained, replaced, checked with a real completion and back in the upstream), and
the requests that failed for any reason other than the bad build's own 500s (refused,
502, a cut stream). Target: no failed request, every run. Needs root (the fleet's login
user); all traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from reliability import db
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.images import service as images
from reliability.runbooks import flows, params
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunStatus
from reliability.testing import docker_cli
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.load import Load
from reliability.testing.nginx import NginxBalancer
from reliability.testing.nginx import missing_requirement as nginx_missing

REPO = Path(__file__).resolve().parents[1]
NODES, RUNS = 4, 3
IMAGE = "vllm/vllm-openai:v0.6.0"
GOOD_REF = "registry.rig.local/serving/vllm:good"
BAD_REF = "registry.rig.local/serving/vllm:bad"
LOAD_MAX_S = 300.0


def write_config(fleet: Fleet, lb: NginxBalancer, directory: Path) -> Config:
    books = directory / "runbooks"
    books.mkdir()
    shutil.copy(REPO / "runbooks" / "image-rollback.yaml", books)
    url = f"sqlite:///{directory / 'reliability.db'}"
    sections = fleet.config_sections(connect_timeout=5.0)
    for node in sections["nodes"]:
        node["role"] = "lb" if node["name"] == "lb-1" else "serving"
    service = {
        "name": "chat",
        "pools": ["blue"],
        "active_pool": "blue",
        "container": {"name": "vllm", "args": ["--model", DEFAULT_MODEL]},
        "load_balancer": lb.lb_config("chat"),
    }
    document = {"database": {"url": url}, **sections, "services": [service]}
    path = directory / "reliability.yaml"
    path.write_text(yaml.safe_dump({**document, "runbooks_dir": str(books)}, sort_keys=False))
    db.upgrade(url)
    return load_config(path)


def deploy_by_hand(fleet: Fleet, node: str, image: str) -> None:
    root = fleet.state_dir
    docker_cli.dispatch(root, node, ["rm", "-f", "vllm"])
    argv = ["run", "-d", "--name", "vllm", "-p", "8000:8000", "-l", "pool=blue", image]
    _, err, code = docker_cli.dispatch(root, node, [*argv, "--model", DEFAULT_MODEL])
    if code != 0:
        raise SystemExit(f"docker run on {node} failed: {err}")


def rollback_once(
    config: Config, fleet: Fleet, lb: NginxBalancer, nodes: list[str], good: str, bad: str
) -> tuple[float, Load]:
    for node in nodes:
        deploy_by_hand(fleet, node, bad)
    book = load_runbooks(config)["image-rollback"]
    values = params.resolve(book, {"service": "chat", "pool": "blue"}, config)
    engine = db.make_engine(config.database_url())
    runner = flows.executor(config, engine, confirm=lambda prompt: True)
    load = Load(lb.url, bad_image=bad, max_seconds=LOAD_MAX_S)
    thread = load.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = runner.run(book, values, actor="bench")
        took = time.monotonic() - started
    finally:
        load.stop.set()
        thread.join(15)
        runner.close()
        engine.dispose()
    if result.status != RunStatus.succeeded:
        raise SystemExit(f"image-rollback {result.status}: {result.reason}")
    running = {fleet.state.container(n, "vllm")["Config"]["Image"] for n in nodes}  # type: ignore[index]
    if running != {good}:
        raise SystemExit(f"after the rollback the nodes run {running}, not {good}")
    return took, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=NODES, help=f"nodes in the pool ({NODES})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"rollbacks ({RUNS})")
    args = parser.parse_args(argv)
    reason = missing_requirement() or nginx_missing()
    if reason:
        raise SystemExit(f"no rig here: {reason}")
    if os.geteuid() != 0:
        raise SystemExit("needs root: the fleet logs in a user of its own (relrig)")
    nodes = [f"gpu-{i}" for i in range(1, args.nodes + 1)]
    pools = dict.fromkeys(nodes, "blue")
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="reliability-bench-") as name,
        Fleet([*nodes, "lb-1"], pools=pools) as fleet,
    ):
        for node in nodes:
            fleet.run_container(node, IMAGE)
        members = [f"{fleet.node(n).address}:8000" for n in nodes]
        with NginxBalancer(fleet, "lb-1", service="chat", members=members) as lb:
            config = write_config(fleet, lb, Path(name))
            good = f"registry.rig.local/serving/vllm@{fleet.state.publish_image(GOOD_REF)}"
            bad_digest = fleet.state.publish_image(BAD_REF)
            fleet.state.break_image(bad_digest)
            with db.session_factory(db.make_engine(config.database_url())).begin() as s:
                images.mark_good(s, service="chat", image=good, by="bench", at=datetime.now(UTC))
            bad = f"registry.rig.local/serving/vllm@{bad_digest}"
            for _ in range(args.runs):
                rows.append(rollback_once(config, fleet, lb, nodes, good, bad))
    seconds = [took for took, _ in rows]
    failed = [len(load.failures) for _, load in rows]
    print(f"image-rollback of a bad build, {args.nodes} nodes behind nginx, {args.runs} runs")
    print("run  seconds  requests  failed  answered-500-by-the-bad-build")
    for i, (took, load) in enumerate(rows, 1):
        shown = (f"{i:>3}", f"{took:7.1f}", f"{load.served:8d}", f"{len(load.failures):6d}")
        print("  ".join(shown), f"{load.bad_answers:>6d}")
    verdict = "yes" if not any(failed) else "NO"
    print(
        f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s; "
        f"failed requests: {sum(failed)} (target 0, every run): {verdict}"
    )
    for _, load in rows:
        for failure in load.failures[:5]:
            print(f"  failed: {failure}")
    return 0 if not any(failed) else 1


if __name__ == "__main__":
    sys.exit(main())
