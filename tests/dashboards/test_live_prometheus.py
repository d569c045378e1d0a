"""Dashboards and exported rules against a real Prometheus scraping a real daemon.

The daemon runs against the rig (SSH nodes, inference stand-ins for a local pool and a
hosted API, a Slack stand-in) with 1 s collect intervals; Debian's `prometheus` scrapes it
every second with the output of `reliability rules export` loaded. It also scrapes four
inference stand-ins, one per serving engine (vLLM, SGLang, TGI, Triton), each speaking its
engine's own metric names with values from the requests it served, labelled with the pool
it serves as a team's scrape config labels it. Once data flows, every target expression of
every panel of every built dashboard (template variables expanded to real values) and every
exported rule's expression must return data from `/api/v1/query`.

Comparisons filter: `x > 0` returns nothing while all is well. Each comparison is
therefore queried with the `bool` modifier (`x > bool 0`), which returns every series the
comparison looks at, with 0 or 1, so "no data" means the series or the label matching
is missing, not that nothing is wrong. Series that exist only after an event (an XID
counter, a lost GPU, a failed Slack call, an acknowledged and resolved incident, a finished
runbook run) are made to exist by causing that event.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from reliability import db
from reliability.dashboards.build import build_all, queries
from reliability.runbooks import service as runs
from reliability.runbooks.models import RunStatus
from reliability.testing.fleet import Fleet
from reliability.testing.inference import DEFAULT_MODEL, InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup
from reliability.testing.loopback import free_port
from reliability.testing.prometheus import PrometheusServer
from reliability.testing.slack import SlackStandIn
from reliability.testing.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ENDPOINT = "pool-blue"
HOSTED = "hosted-api"
# The engines other than the daemon's probed vLLM pool, and the pool each serves.
ENGINE_POOLS = {"sglang": "green", "tgi": "green", "triton": "blue"}
NODE = "gpu-1"  # where the events happen and what `$node` selects
TOKEN_ENV = "RELIABILITY_TEST_SLACK_TOKEN"
INTERVAL = "1m"  # `$__rate_interval`: wide enough for >= 2 samples
# Grafana's range variables, as for a 5 minute dashboard at one point per scrape.
RANGE = {"__range": "5m", "__range_s": "300", "__range_ms": "300000"}
STEP = {"__interval": "1s", "__interval_ms": "1000"}
DATA_WITHIN_S = 25.0

# Expressions that cannot return data in this rig by design, with the reason. A key is the
# start of a check's name: "<dashboard>: '<panel>': <expr>" or "rule <alert>:". Add one
# only for a series that truly cannot exist here.
# None today: the slowdown temperature, once NVML's alone, now comes over nvidia-smi too.
ALLOWED_EMPTY: dict[str, str] = {}

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


def probe(name: str, server: InferenceHandle, role: str) -> dict[str, object]:
    return {
        "name": name,
        "url": server.url,
        "role": role,
        "model": server.spec.model,
        "interval": "1s",
        "timeout": "900ms",
        "completion_interval": "2s",
    }


def write_config(
    directory: Path,
    port: int,
    rig: Fleet,
    endpoint: InferenceHandle,
    hosted: InferenceHandle,
    slack: SlackStandIn,
) -> Path:
    config = {
        "database": {"url": f"sqlite:///{directory / 'reliability.db'}"},
        "http": {"listen": f"127.0.0.1:{port}"},
        **rig.config_sections(),
        "endpoints": [probe(ENDPOINT, endpoint, "local"), probe(HOSTED, hosted, "hosted")],
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


def serve_requests(servers: list[InferenceHandle], rounds: int = 3) -> None:
    """Chat completions to each engine stand-in, plain and streamed: the traffic its metrics
    count (the vLLM pool gets the daemon's probes)."""
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(rounds):
        for server in servers:
            url = f"{server.url}/v1/chat/completions"
            assert httpx.post(url, json=body, timeout=5).status_code == 200
            with httpx.stream("POST", url, json=body | {"stream": True}, timeout=5) as reply:
                for _ in reply.iter_lines():
                    pass


def record_runbook_run(config: Path) -> None:
    """A finished run, as the runbook engine records one (a real run needs a service)."""
    url = yaml.safe_load(config.read_text())["database"]["url"]
    db.load_models()  # the run's foreign key names the incidents table
    engine = db.make_engine(url)
    now = datetime.now(UTC)
    try:
        with db.session_factory(engine)() as session, session.begin():
            run = runs.create_run(
                session,
                runbook="node-failover",
                params={"node": NODE},
                services=[],
                started_by="live-test",
                incident_id=None,
                now=now,
            )
            runs.finish_run(
                session, run_id=run.id, status=RunStatus.succeeded, reason=None, now=now
            )
    finally:
        engine.dispose()


def acknowledge_and_resolve(config: Path) -> None:
    """The lost GPU's incident, acknowledged and resolved through the CLI, as on-call does
    (it reopens: the GPU is still lost)."""
    found: list[int] = []

    def opened() -> bool:
        listed = cli("incidents", "list", "--json", "-c", str(config))
        assert listed.returncode == 0, listed.stdout + listed.stderr
        found[:] = [i["id"] for i in json.loads(listed.stdout) if i["labels"].get("node") == NODE]
        return bool(found)

    wait_for("an incident on the lost GPU", opened, DATA_WITHIN_S, every=0.25)
    for verb in ("ack", "resolve"):
        done = cli("incidents", verb, str(found[0]), "--by", "alice", "-c", str(config))
        assert done.returncode == 0, done.stdout + done.stderr


def variable_values(model: dict[str, object]) -> dict[str, str]:
    """A dashboard's own text variables (the price per kWh) at their default."""
    return {
        v["name"]: str(v["query"])
        for v in model.get("templating", {}).get("list", [])  # type: ignore[union-attr]
        if v.get("type") in ("textbox", "constant")
    }


@pytest.mark.rig
def test_every_panel_and_rule_expression_returns_data_from_a_real_prometheus(
    rig: Fleet,
    inference_server: InferenceHandle,
    inference_group: ServerGroup,
    slack: SlackStandIn,
    tmp_path: Path,
    daemon_process,
):
    hosted = inference_group.start(InferenceSpec(pool="hosted"))
    engines = {
        engine: inference_group.start(InferenceSpec(pool=pool, engine=engine))
        for engine, pool in ENGINE_POOLS.items()
    }
    # The daemon's probed pool plays vLLM: its engine metrics count the probes' completions.
    assert inference_server.spec.engine == "vllm"
    engines["vllm"] = inference_server
    port = free_port()
    config = write_config(tmp_path, port, rig, inference_server, hosted, slack)
    upgraded = cli("db", "upgrade", "-c", str(config))
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    record_runbook_run(config)
    rules = tmp_path / "reliability.rules.yml"
    exported = cli("rules", "export", "-c", str(config), "--out", str(rules))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    # The detection rules; the daemons' own group (selfwatch.py) is loaded beside them.
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = groups[0]["rules"]
    assert alerts

    # Events whose series exist only once they happened: an XID (its counter), a lost GPU
    # (an incident, so a Slack message and outbox rows) and a failed Slack call.
    rig.state.add_xid(NODE, 0, 79, "GPU has fallen off the bus.")
    rig.state.set_gpu_status(NODE, 3, "lost")
    slack.state.fail_next(1, "internal_error", method="chat.postMessage")  # not auth.test

    target = daemon_process(config)
    engine_jobs = [
        {
            "job_name": "engines",
            "static_configs": [
                {"targets": [f"{s.host}:{s.port}"], "labels": {"pool": s.spec.pool}}
                for s in engines.values()
            ],
        }
    ]
    with PrometheusServer(
        tmp_path / "prometheus", [target], rules=rules, scrape_configs=engine_jobs
    ) as prom:
        assert len(prom.rules_loaded()) == sum(len(g["rules"]) for g in groups)
        wait_for("5 scrapes of the daemon", lambda: _scrapes(prom) >= 5, DATA_WITHIN_S, every=0.25)
        serve_requests([engines[e] for e in ENGINE_POOLS])
        acknowledge_and_resolve(config)

        values = {"node": NODE, "endpoint": ENDPOINT, "__rate_interval": INTERVAL}
        values |= RANGE | STEP
        checks: list[tuple[str, str]] = []
        for built in build_all(DASHBOARDS):
            own = values | variable_values(built.model)
            for where, expr in queries(built.model):
                if where.startswith("panel "):
                    checks.append((f"{built.title}: {where[6:]}: {expr}", expand(expr, own)))
        checks += [(f"rule {a['alert']}: {a['expr']}", a["expr"]) for a in alerts]

        assert len(checks) > len(alerts)
        for key in ALLOWED_EMPTY:
            assert any(name.startswith(key) for name, _ in checks), f"stale allowlist: {key}"

        def empty(among: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [(n, e) for n, e in among if not prom.query(without_filtering(e))]

        # Counters that need an event, and 1m windows, need a few more scrapes: ask again
        # only what had no data yet.
        deadline = time.monotonic() + DATA_WITHIN_S
        missing = empty([(n, e) for n, e in checks if not _allowed(n)])
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            missing = empty(missing)
        assert not missing, "returned no data:\n" + "\n".join(
            f"{name}\n    queried as: {without_filtering(expr)}" for name, expr in missing
        )
        # An allowed expression that now has data is no longer an exception: drop its entry.
        answering = [n for n, e in checks if _allowed(n) and prom.query(without_filtering(e))]
        assert not answering, "allowlisted but returns data:\n" + "\n".join(answering)


def _scrapes(prom: PrometheusServer) -> int:
    found = prom.query('count_over_time(up{job="reliability"}[1m])')
    return int(float(found[0]["value"][1])) if found else 0


def _allowed(name: str) -> bool:
    return any(name.startswith(key) for key in ALLOWED_EMPTY)
