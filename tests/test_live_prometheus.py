"""Dashboards and exported rules against a real Prometheus scraping a real daemon.

The daemon runs against the rig (SSH nodes, an inference stand-in, a Slack stand-in) with
1 s collect intervals; Debian's `prometheus` scrapes it every second with the output of
`reliability rules export` loaded. Once data flows, every target expression of every panel
of every built dashboard (template variables expanded to real values) and every exported
rule's expression must return data from `/api/v1/query`.

Comparisons filter: `x > 0` returns nothing while all is well. Each comparison is
therefore queried with the `bool` modifier (`x > bool 0`), which returns every series the
comparison looks at, with 0 or 1, so "no data" means the series or the label matching
is missing, not that nothing is wrong. Series that exist only after an event (an XID
counter, a lost GPU, a failed Slack call) are made to exist by causing that event.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from reliability.dashboards.build import build_all, queries
from reliability.testing.fleet import Fleet
from reliability.testing.inference_group import InferenceHandle
from reliability.testing.loopback import free_port
from reliability.testing.prometheus import PrometheusServer
from reliability.testing.slack import SlackStandIn

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
ENDPOINT = "pool-blue"
NODE = "gpu-1"  # where the events happen and what `$node` selects
TOKEN_ENV = "RELIABILITY_TEST_SLACK_TOKEN"
INTERVAL = "1m"  # `$__rate_interval` / `$__interval`: wide enough for >= 2 samples
DATA_WITHIN_S = 25.0

# Expressions that cannot return data in this rig by design, with the reason. A key is the
# start of a check's name: "<dashboard>: '<panel>': <expr>" or "rule <alert>:". Add one
# only for a series that truly cannot exist here.
_NO_SLOWDOWN_FROM_SMI = (
    "the rig's nodes report GPUs through nvidia-smi, which has no query field for the "
    "slowdown temperature (reliability/collect/gpu_smi.py); only the NVML back end, which "
    "reads the daemon's own machine, reports reliability_gpu_slowdown_temperature_celsius"
)
ALLOWED_EMPTY: dict[str, str] = {
    "GPU fleet: 'Temperature against the slowdown temperature': "
    "reliability_gpu_slowdown_temperature_celsius{": _NO_SLOWDOWN_FROM_SMI,
    "rule GpuTemperatureSlowdown:": _NO_SLOWDOWN_FROM_SMI,
}

_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def expand(expr: str, values: dict[str, str]) -> str:
    """Grafana's template variables replaced by real values (unknown ones by `.*`)."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1), ".*"), expr)


def without_filtering(expr: str) -> str:
    """Every comparison outside label matchers and strings turned into `op bool`."""
    out: list[str] = []
    depth = 0
    pos = 0
    while pos < len(expr):
        char = expr[pos]
        literal = _STRING.match(expr, pos)
        if literal:
            out.append(literal.group(0))
            pos = literal.end()
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and (op := _COMPARISON.match(expr, pos)):
            rest = expr[op.end() :]
            if not rest.lstrip().startswith("bool"):
                out.append(f"{op.group(0)} bool")
                pos = op.end()
                continue
        out.append(char)
        pos += 1
    return "".join(out)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reliability", *args], capture_output=True, text=True, timeout=60
    )


def write_config(
    directory: Path, port: int, rig: Fleet, endpoint: InferenceHandle, slack: SlackStandIn
) -> Path:
    config = {
        "database": {"url": f"sqlite:///{directory / 'reliability.db'}"},
        "http": {"listen": f"127.0.0.1:{port}"},
        **rig.config_sections(),
        "endpoints": [
            {
                "name": ENDPOINT,
                "url": endpoint.url,
                "model": endpoint.spec.model,
                "interval": "1s",
                "timeout": "900ms",
                "completion_interval": "2s",
            }
        ],
        "collect": {"node_interval": 1, "gpu_interval": 1, "timeout": 1},
        "slack": {"token_env": TOKEN_ENV, "channel": "#oncall", "base_url": slack.api_url},
    }
    path = directory / "reliability.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def daemon_process(slack: SlackStandIn) -> Iterator[Callable[[Path], str]]:
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path) -> str:
        port = yaml.safe_load(config.read_text())["http"]["listen"].rsplit(":", 1)[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "reliability", "daemon", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, TOKEN_ENV: slack.token},
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"daemon exited ({proc.returncode}): {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return f"127.0.0.1:{port}"
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail("daemon /healthz not within 15s")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_for(what: str, ok: Callable[[], bool], timeout: float = DATA_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout}s")


@pytest.mark.rig
def test_every_panel_and_rule_expression_returns_data_from_a_real_prometheus(
    rig: Fleet,
    inference_server: InferenceHandle,
    slack: SlackStandIn,
    tmp_path: Path,
    daemon_process,
):
    port = free_port()
    config = write_config(tmp_path, port, rig, inference_server, slack)
    upgraded = cli("db", "upgrade", "-c", str(config))
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    rules = tmp_path / "reliability.rules.yml"
    exported = cli("rules", "export", "-c", str(config), "--out", str(rules))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    alerts = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    assert alerts

    # Events whose series exist only once they happened: an XID (its counter), a lost GPU
    # (an incident, so a Slack message and outbox rows) and a failed Slack call.
    rig.state.add_xid(NODE, 0, 79, "GPU has fallen off the bus.")
    rig.state.set_gpu_status(NODE, 3, "lost")
    slack.state.fail_next(1, "internal_error")

    target = daemon_process(config)
    with PrometheusServer(tmp_path / "prometheus", [target], rules=rules) as prom:
        assert len(prom.rules_loaded()) == len(alerts)
        wait_for("5 scrapes of the daemon", lambda: _scrapes(prom) >= 5)

        values = {"node": NODE, "endpoint": ENDPOINT, "__rate_interval": INTERVAL}
        values["__interval"] = INTERVAL
        checks: list[tuple[str, str]] = []
        for built in build_all(DASHBOARDS):
            for where, expr in queries(built.model):
                if where.startswith("panel "):
                    checks.append((f"{built.title}: {where[6:]}: {expr}", expand(expr, values)))
        checks += [(f"rule {a['alert']}: {a['expr']}", a["expr"]) for a in alerts]

        assert len(checks) > len(alerts)
        for key in ALLOWED_EMPTY:
            assert any(name.startswith(key) for name, _ in checks), f"stale allowlist: {key}"

        def empty() -> list[str]:
            return [
                f"{name}\n    queried as: {without_filtering(expr)}"
                for name, expr in checks
                if not _allowed(name) and not prom.query(without_filtering(expr))
            ]

        # Counters that need an event, and 1m windows, need a few more scrapes.
        deadline = time.monotonic() + DATA_WITHIN_S
        missing = empty()
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            missing = empty()
        assert not missing, "returned no data:\n" + "\n".join(missing)
        # An allowed expression that now has data is no longer an exception: drop its entry.
        answering = [n for n, e in checks if _allowed(n) and prom.query(without_filtering(e))]
        assert not answering, "allowlisted but returns data:\n" + "\n".join(answering)


def _scrapes(prom: PrometheusServer) -> int:
    found = prom.query('count_over_time(up{job="reliability"}[1m])')
    return int(float(found[0]["value"][1])) if found else 0


def _allowed(name: str) -> bool:
    return any(name.startswith(key) for key in ALLOWED_EMPTY)
