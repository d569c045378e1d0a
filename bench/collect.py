"""Benchmark the daemon's collection cycles, its CPU and memory, and its `/metrics` scrape.

    .venv/bin/python bench/collect.py [--seconds S] [--scrapes N]

Collect: 200 OpenAI-compatible stand-ins probed every 5 s, and 50 nodes (real sshd on
loopback addresses, nvidia-smi/dmesg/docker stand-ins) collected every 15 s by the node and
GPU collectors. `daemon.build` wires them from a `Config` and `daemon.serve` runs them, as
`reliability daemon` does, in a process of its own: the stand-ins run elsewhere, so the
daemon's CPU (from /proc) is its own. The bench scrapes its /metrics every 15 s, as
Prometheus would. Scrape: the daemon's HTTP surface, with a snapshot of 1,000 GPUs x 20
series (125 nodes x 8 GPUs), scraped N times over HTTP without compression, next to
Debian's prometheus-node-exporter when it is installed.
Targets: a job's first cycle (it connects to every target) inside its interval and every
later cycle within half of it, no failed target, daemon CPU < 10 % of one core (whole run,
first cycles included), RSS < 150 MB, scrape p99 < 50 ms.
Needs root (the fleet's login user). All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx

from reliability import catalog, daemon, db
from reliability.collect.base import Sample
from reliability.collect.gpu_common import node_count_samples
from reliability.collect.runner import Outcome
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import serve_many
from reliability.testing.loopback import free_port

ENDPOINTS = 200
API_INTERVAL = 5.0
API_TIMEOUT = 2.0
NODES = 50
NODE_INTERVAL = 15.0
GPUS_PER_NODE = 8
SCRAPE_NODES = 125  # x 8 GPUs = 1,000 GPUs
PROMETHEUS_INTERVAL = 15.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
WARMUP_SCRAPES = 5
NODE_EXPORTER = "prometheus-node-exporter"
TARGET_CPU_PERCENT = 10.0
TARGET_RSS_MB = 150.0
TARGET_SCRAPE_P99_MS = 50.0
# "Well inside its interval": a cycle after the first may use at most this share of it.
TARGET_CYCLE_SHARE = 0.5


@dataclass(frozen=True)
class JobResult:
    """Cycle durations of one job: the first, then max and p95 of the later ones."""

    name: str
    interval: float
    cycles: int
    first_s: float
    max_s: float
    p95_s: float
    ok: int
    failed: int


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    rss_peak_mb: float
    series: int


@dataclass(frozen=True)
class ScrapeResult:
    name: str
    series: int
    size: int
    p50_ms: float
    p99_ms: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def series_count(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def wait_until_answering(url: str, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{url}: the server exited before answering")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer within {START_TIMEOUT:g}s")


# --- the daemon process --------------------------------------------------------------------
def _log_to(path: Path) -> None:
    logging.basicConfig(
        filename=path, level=logging.WARNING, format="%(created).3f %(name)s: %(message)s"
    )


def warnings_before(log: Path, until: float) -> list[str]:
    """The log's records stamped before `until` (later ones come from stopping the daemon)."""
    lines = log.read_text().splitlines() if log.exists() else []
    stamped = [line.partition(" ") for line in lines]
    return [
        rest
        for stamp, _, rest in stamped
        if stamp.replace(".", "").isdigit() and float(stamp) < until
    ]


def _timed(job: daemon.Job, records: Path, lock: threading.Lock) -> Callable[[], list[Outcome]]:
    """`job`'s cycle, appending its duration and outcome counts to `records` (JSON lines)."""
    cycle = job.runner.run_cycle
    name = job.runner.collector.name

    def run() -> list[Outcome]:
        started = time.monotonic()
        outcomes = cycle()
        ok = sum(o.ok for o in outcomes)
        record = {
            "job": name,
            "interval": job.interval,
            "duration": time.monotonic() - started,
            "finished": time.time(),
            "ok": ok,
            "failed": len(outcomes) - ok,
        }
        with lock, records.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return outcomes

    return run


def run_collecting_daemon(config: Config, records: Path, log: Path) -> None:
    """Child process: the daemon as `reliability daemon` runs it, each cycle timed."""
    _log_to(log)
    built = daemon.build(config)
    lock = threading.Lock()
    for job in built.jobs:
        # serve() schedules `job.runner.run_cycle`: the timed one runs in its place.
        job.runner.run_cycle = _timed(job, records, lock)
    daemon.serve(built)


def run_scrape_daemon(config: Config) -> None:
    """Child process: the daemon with no jobs, serving a snapshot of 1,000 GPUs."""
    daemon.serve(daemon.Daemon(config, gpu_snapshot(), []))


@contextlib.contextmanager
def child(target: Callable[..., None], *args: object) -> Iterator[BaseProcess]:
    """`target(*args)` in a fresh interpreter, stopped by SIGTERM (then SIGKILL) at exit."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    try:
        yield process
    finally:
        process.terminate()
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()  # fields 3.. of proc(5); comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def watch(process: BaseProcess, url: str, seconds: float) -> Usage:
    """Let the daemon run `seconds` after it answers, scraped like Prometheus; its usage."""
    assert process.pid is not None
    wait_until_answering(url + "/healthz", process.is_alive)
    started, cpu_start = time.monotonic(), cpu_seconds(process.pid)
    body, next_scrape = "", started
    with httpx.Client(timeout=5.0) as client:
        while (now := time.monotonic()) < started + seconds:
            if not process.is_alive():
                raise RuntimeError(f"the daemon exited ({process.exitcode})")
            if now >= next_scrape:
                body = client.get(url + "/metrics").text
                next_scrape += PROMETHEUS_INTERVAL
            time.sleep(min(1.0, started + seconds - now))
    cpu = cpu_seconds(process.pid) - cpu_start
    elapsed = time.monotonic() - started
    return Usage(100 * cpu / elapsed, rss_peak_mb(process.pid), series_count(body))


def base_sections(directory: Path, port: int) -> dict[str, object]:
    """Database and HTTP as a production config has them (with a webhook token)."""
    token = directory / "webhook-token"
    token.write_text(secrets.token_hex(16))
    return {
        "database": {"url": f"sqlite:///{directory / 'bench.db'}"},
        "http": {"listen": f"127.0.0.1:{port}", "webhook_token_file": str(token)},
    }


def collect_config(fleet: Fleet, urls: list[str], directory: Path, port: int) -> Config:
    sections = fleet.config_sections(connect_timeout=5.0)
    return Config.model_validate(
        {
            **base_sections(directory, port),
            "ssh": sections["ssh"],
            "nodes": [{**node, "container": "vllm"} for node in sections["nodes"]],
            "endpoints": [
                {
                    "name": f"endpoint-{i:03d}",
                    "url": url,
                    "model": InferenceSpec().model,
                    "interval": API_INTERVAL,
                    "timeout": API_TIMEOUT,
                }
                for i, url in enumerate(urls)
            ],
            "collect": {"node_interval": NODE_INTERVAL, "gpu_interval": NODE_INTERVAL},
        }
    )


def job_results(records: Path, until: float) -> list[JobResult]:
    """Per job, the cycles that finished by `until` (later ones were cut by the stop)."""
    runs: dict[tuple[str, float], list[dict]] = {}
    for line in records.read_text().splitlines() if records.exists() else []:
        record = json.loads(line)
        if record["finished"] <= until:
            runs.setdefault((record["job"], record["interval"]), []).append(record)
    results = []
    for (name, interval), rs in runs.items():
        durations = [r["duration"] for r in rs]
        later = durations[1:] or durations
        results.append(
            JobResult(
                name,
                interval,
                len(rs),
                durations[0],
                max(later),
                percentile(later, 95),
                sum(r["ok"] for r in rs),
                sum(r["failed"] for r in rs),
            )
        )
    return results


def bench_collect(seconds: float, directory: Path) -> tuple[list[JobResult], Usage, list[str]]:
    records, log, port = directory / "cycles.jsonl", directory / "collect.log", free_port()
    names = [f"node-{i:02d}" for i in range(NODES)]
    with (
        Fleet(names, gpus=GPUS_PER_NODE) as fleet,
        serve_many([InferenceSpec()] * ENDPOINTS) as group,
    ):
        config = collect_config(fleet, [h.url for h in group.handles], directory, port)
        db.upgrade(config.database_url())  # the rules evaluate (and cost CPU) as in production
        with child(run_collecting_daemon, config, records, log) as process:
            usage = watch(process, f"http://127.0.0.1:{port}", seconds)
            stopping = time.time()
    return job_results(records, stopping), usage, warnings_before(log, stopping)


# --- /metrics scrape ------------------------------------------------------------------------
def gpu_samples(node: str, gpu: int) -> list[Sample]:
    """The 20 series one GPU has in the catalogue's terms (identity, gauges, counters)."""
    labels = (node, str(gpu))
    gauges = {
        catalog.GPU_LOST: 0.0,
        catalog.GPU_UTILIZATION: 0.87,
        catalog.GPU_MEMORY_UTILIZATION: 0.41,
        catalog.GPU_MEMORY_USED: 71_234_567_168.0,
        catalog.GPU_MEMORY_TOTAL: 85_899_345_920.0,
        catalog.GPU_TEMPERATURE: 61.0 + gpu,
        catalog.GPU_SLOWDOWN_TEMPERATURE: 90.0,
        catalog.GPU_POWER_DRAW: 512.25,
        catalog.GPU_POWER_LIMIT: 700.0,
        catalog.GPU_ENERGY: 1.234567e9,
        catalog.GPU_SM_CLOCK: 1.98e9,
        catalog.GPU_REMAP_PENDING: 0.0,
        catalog.GPU_REMAP_FAILURE: 0.0,
        catalog.GPU_RETIRED_PAGES_PENDING: 0.0,
        catalog.GPU_PCIE_REPLAY: 3.0,
    }
    info = (node, str(gpu), f"GPU-{node}-{gpu:08x}", "NVIDIA H100 80GB HBM3", f"00:{gpu:02x}.0")
    return [
        Sample(catalog.GPU_INFO, info, 1.0),
        *(Sample(metric, labels, value) for metric, value in gauges.items()),
        *(
            Sample(catalog.GPU_ECC_ERRORS, (*labels, kind, scope), 0.0)
            for kind in ("corrected", "uncorrected")
            for scope in ("volatile", "aggregate")
        ),
    ]


def gpu_snapshot() -> Snapshot:
    snapshot = Snapshot()
    for n in range(SCRAPE_NODES):
        node = f"gpu-{n:03d}"
        samples = [s for gpu in range(GPUS_PER_NODE) for s in gpu_samples(node, gpu)]
        counts = node_count_samples(node, expected=GPUS_PER_NODE, visible=GPUS_PER_NODE, lost=0)
        snapshot.publish("gpu", node, ok=True, duration=0.2, samples=[*samples, *counts])
    return snapshot


def scrape(name: str, url: str, count: int) -> ScrapeResult:
    """`count` timed scrapes on one kept-alive connection, as Prometheus does, uncompressed."""
    latencies: list[float] = []
    with httpx.Client(timeout=5.0, headers={"accept-encoding": "identity"}) as client:
        for _ in range(WARMUP_SCRAPES):
            client.get(url).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(url)
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return ScrapeResult(
        name,
        series_count(response.text),
        len(response.content),
        percentile(latencies, 50),
        percentile(latencies, 99),
    )


def bench_daemon_scrape(count: int, directory: Path) -> ScrapeResult:
    port = free_port()
    config = Config.model_validate(base_sections(directory, port))
    with child(run_scrape_daemon, config) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(url + "/healthz", process.is_alive)
        return scrape("reliability daemon", url + "/metrics", count)


def bench_node_exporter(count: int) -> ScrapeResult | None:
    """Debian's node exporter on a free loopback port; None if it is not installed."""
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        return None
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, f"--web.listen-address={address}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://{address}/metrics"
        wait_until_answering(url, lambda: process.poll() is None)
        return scrape(NODE_EXPORTER, url, count)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


# --- report -----------------------------------------------------------------------------------
def print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns aligned; the first left, the others right."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = zip(row, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))


def print_collect(jobs: list[JobResult], usage: Usage, seconds: float) -> None:
    print(
        f"\ncollect: {ENDPOINTS} endpoints every {API_INTERVAL:g}s, {NODES} nodes "
        f"(node + gpu) every {NODE_INTERVAL:g}s, {seconds:g}s run; max and p95 of the "
        "cycles after the first"
    )
    print_table(
        ("job", "every s", "cycles", "first s", "max s", "p95 s", "max/every", "ok", "failed"),
        [
            (
                j.name,
                f"{j.interval:g}",
                str(j.cycles),
                f"{j.first_s:.3f}",
                f"{j.max_s:.3f}",
                f"{j.p95_s:.3f}",
                f"{j.max_s / j.interval:.0%}",
                str(j.ok),
                str(j.failed),
            )
            for j in jobs
        ],
    )
    print(
        f"daemon: CPU {usage.cpu_percent:.1f} % of one core (target < {TARGET_CPU_PERCENT:g} %), "
        f"RSS peak {usage.rss_peak_mb:.0f} MB (target < {TARGET_RSS_MB:g} MB), "
        f"{usage.series:,} series on its /metrics"
    )


def print_scrapes(results: list[ScrapeResult], missing: list[str], count: int) -> None:
    print(f"\n/metrics: {count} scrapes each, one kept-alive connection, uncompressed")
    rows = [
        (r.name, f"{r.series:,}", f"{r.size:,}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}")
        for r in results
    ]
    rows += [(name, "not installed", "-", "-", "-") for name in missing]
    print_table(("server", "series", "bytes", "p50 ms", "p99 ms"), rows)


def print_warnings(lines: list[str]) -> None:
    """What the daemon logged at WARNING or above during the run: nothing when healthy."""
    if lines:
        print(f"\nthe daemon logged {len(lines)} warning(s) during the run; the first:")
        print("\n".join(f"  {line}" for line in lines[:5]))


def verdicts(jobs: list[JobResult], usage: Usage, scrape_p99_ms: float) -> dict[str, bool]:
    return {
        "first cycles inside their interval": bool(jobs)
        and all(j.first_s < j.interval for j in jobs),
        f"later cycles within {TARGET_CYCLE_SHARE:.0%} of it": bool(jobs)
        and all(j.max_s <= TARGET_CYCLE_SHARE * j.interval for j in jobs),
        "no failed targets": bool(jobs) and not any(j.failed for j in jobs),
        f"CPU < {TARGET_CPU_PERCENT:g} %": usage.cpu_percent < TARGET_CPU_PERCENT,
        f"RSS < {TARGET_RSS_MB:g} MB": usage.rss_peak_mb < TARGET_RSS_MB,
        f"scrape p99 < {TARGET_SCRAPE_P99_MS:g} ms": scrape_p99_ms < TARGET_SCRAPE_P99_MS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="collect run length (default 60, min 30)"
    )
    parser.add_argument(
        "--scrapes", type=int, default=200, help="timed scrapes per server (default 200)"
    )
    args = parser.parse_args(argv)
    if args.seconds < 2 * NODE_INTERVAL or args.scrapes < 1:
        parser.error(f"--seconds must be >= {2 * NODE_INTERVAL:g} and --scrapes >= 1")
    problem = missing_requirement() or (None if os.geteuid() == 0 else "it needs root")
    if problem:
        print(f"cannot start the fleet: {problem}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="reliability-bench-") as tmp:
        directory = Path(tmp)
        jobs, usage, warnings = bench_collect(args.seconds, directory)
        daemon_scrape = bench_daemon_scrape(args.scrapes, directory)
    exporter = bench_node_exporter(args.scrapes)
    # Numbers only compare on the same machine: say which one this was.
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print_collect(jobs, usage, args.seconds)
    print_scrapes(
        [daemon_scrape, *([exporter] if exporter else [])],
        [] if exporter else [NODE_EXPORTER],
        args.scrapes,
    )
    print_warnings(warnings)
    met = verdicts(jobs, usage, daemon_scrape.p99_ms)
    missed = [name for name, ok in met.items() if not ok]
    if missed:
        print("\ntargets missed: " + ", ".join(missed))
        return 1
    print("\nall targets met: " + ", ".join(met))
    return 0


if __name__ == "__main__":
    sys.exit(main())
