"""Benchmark the capacity test's load generator: the most requests/s it offers on this
machine while measuring correctly.

    .venv/bin/python bench/loadgen.py [--step-seconds S] [--max-users N]

A fast inference stand-in (no seat limit, no time per token) runs in a process of its own;
the generator (`reliability.capacity.measure.run`, what `capacity test` runs: Locust in its
own process) steps its users up against it, plain and streamed requests apart. Per step:
requests/s, end-to-end p50/p95, TTFT p95, the generator's CPU (share of one core: a gevent
process uses one) and the stand-in's. A step *measures* while the generator stays under
GENERATOR_CPU_LIMIT of a core: beyond it, its own CPU is the limit and the latencies it
reports include its own queueing. Target: a measuring step at or above TARGET_QPS (the
small-cluster tier of the operating scenario, 80-150 requests/s). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

from reliability.capacity import measure
from reliability.capacity.plan import Plan
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.loopback import free_port

TARGET_QPS = 150.0
GENERATOR_CPU_LIMIT = 0.8  # of one core
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def start_stand_in(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "reliability.testing.inference", "--port", str(port),
         "--pool", "bench", "--image", "bench"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the stand-in did not start")


def run_steps(url: str, users: list[int], step_s: float, stream_share: float, pid: int) -> list:
    plan = Plan(
        urls=[url],
        model=DEFAULT_MODEL,
        steps=users,
        step_s=step_s,
        spawn_rate=100.0,
        prompt_words=64,
        max_tokens=16,
        stream_share=stream_share,
        request_timeout=10.0,
        ttft_p95_s=60.0,
        e2e_p95_s=60.0,
        error_ratio=1.0,
        stop_when_missed=False,
    )
    rows = []
    mark = [time.monotonic(), cpu_seconds(pid)]

    def on_event(kind: str, data: dict) -> None:
        if kind != "step":
            return
        now, cpu = time.monotonic(), cpu_seconds(pid)
        rows.append((data, (cpu - mark[1]) / (now - mark[0])))
        mark[:] = [now, cpu]

    measure.run(plan, on_event)
    return rows


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--max-users", type=int, default=64)
    args = parser.parse_args()
    if problem := measure.missing_extra("locust"):
        raise SystemExit(problem)
    users = [u for u in (1, 2, 4, 8, 16, 32, 64, 128) if u <= args.max_users]
    port = free_port()
    stand_in = start_stand_in(port)
    best = 0.0
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load generator on {platform.node()}: {os.cpu_count()} cores (load average "
              f"{load}), Python {platform.python_version()}; one stand-in process, "
              f"{args.step_seconds:g}s a step")  # fmt: skip
        print(f"{'kind':8} {'users':>5} {'req/s':>8} {'e2e p50':>8} {'e2e p95':>8} "
              f"{'TTFT p95':>8} {'errors':>7} {'gen CPU':>7} {'stand-in':>8}  verdict")  # fmt: skip
        for kind, share in (("plain", 0.0), ("streamed", 1.0)):
            url = f"http://127.0.0.1:{port}"
            for step, stand_cpu in run_steps(url, users, args.step_seconds, share, stand_in.pid):
                measuring = step["generator_cpu"] < GENERATOR_CPU_LIMIT
                if measuring and step["error_ratio"] == 0:
                    best = max(best, step["qps"])
                verdict = "measures" if measuring else "generator-bound"
                if stand_cpu > 0.9:
                    verdict += " (stand-in busy)"
                print(f"{kind:8} {step['users']:>5} {step['qps']:>8.1f} "
                      f"{ms(step['e2e_p50_s']):>8} {ms(step['e2e_p95_s']):>8} "
                      f"{ms(step['ttft_p95_s']):>8} {step['error_ratio']:>7.1%} "
                      f"{step['generator_cpu']:>7.0%} {stand_cpu:>8.0%}  {verdict}")  # fmt: skip
    finally:
        stand_in.terminate()
        stand_in.wait(10)
    ok = best >= TARGET_QPS
    print(f"\nhighest rate measured correctly (generator < {GENERATOR_CPU_LIMIT:.0%} of a core, "
          f"no errors): {best:.0f} requests/s; target >= {TARGET_QPS:.0f}: "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
