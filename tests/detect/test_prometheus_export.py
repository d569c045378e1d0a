"""`reliability rules export` as a Prometheus user relies on it: the file loads in
Prometheus, every alert fires on the series the built-in engine would flag and stays quiet
on the others, it queries only metrics the daemon exports, and it is the same every time.

The `promtool test rules` cases are generated from the rule objects, so a new rule (built-in
or in the example config) is tested without a hand-written case, and a new rule type
without a case generator fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from reliability import catalog
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.collect.base import Sample
from reliability.collect.snapshot import Snapshot
from reliability.config import Config
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    GpuLostRule,
    ReachabilityRule,
    RecoveredRule,
    TargetDownRule,
    ThresholdRule,
)
from reliability.detect.builtin import BUILTIN, active_rules
from reliability.detect.evaluator import endpoint_labels, recoveries
from reliability.detect.prometheus import alert_labels, alert_name, export, prom_duration
from reliability.detect.readings import Recovery
from reliability.detect.rules import TARGET_LABEL, AnyRule
from reliability.durations import format_duration
from reliability.testing.prometheus import PrometheusServer
from reliability.testing.services import service_missing

EXAMPLE = Path(__file__).resolve().parents[2] / "reliability.example.yaml"
STEP = 15.0  # seconds between input samples and between rule evaluations

Series = list[dict[str, str]]
Case = tuple[Series, list[dict[str, str]], float]  # input series, alerts' labels, eval time


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        service_missing("promtool (Debian package prometheus) not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def example() -> Config:
    return load_config(EXAMPLE)


def _promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def _series(metric: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{metric}{{{body}}}", "values": values}


def _steady(value: float, until: float) -> str:
    return f"{value!r}x{int(until / STEP) + 1}"


def _bad_good(op: str, limit: float) -> tuple[float, float]:
    """A value that holds `value op limit`, and one that does not."""
    return {
        ">": (limit + 1, limit - 1),
        ">=": (limit, limit - 1),
        "<": (limit - 1, limit + 1),
        "<=": (limit, limit + 1),
        "==": (limit, limit + 1),
        "!=": (limit + 1, limit),
    }[op]


def _labels(metric: catalog.Metric, node: str, match: Mapping[str, str]) -> dict[str, str]:
    """A series of `metric` on `node` that `match` selects (its first alternative); `node`
    names its first label when it has no `node` (a notifier's)."""
    labels = {label: "0" if label == "gpu" else "x" for label in metric.labels}
    labels |= {label: regex.split("|")[0] for label, regex in match.items()}
    assert all(re.fullmatch(regex, labels[k]) for k, regex in match.items())
    if "node" in labels:
        return labels | {"node": node}
    return labels | {metric.labels[0]: node} if metric.labels and not match else labels


def _threshold_case(rule: ThresholdRule) -> Case:
    at = rule.for_ + 4 * STEP
    metric = catalog.BY_NAME[rule.metric]
    limit = 80.0 if rule.value_metric else float(rule.value or 0.0)
    bad, good = _bad_good(rule.op, limit)
    series = []
    for node, value in (("bad", bad), ("ok", good)):
        labels = _labels(metric, node, rule.match)
        series.append(_series(rule.metric, labels, _steady(value, at)))
        if rule.per:
            series.append(_series(rule.per, labels, _steady(1.0, at)))
        if rule.value_metric:
            series.append(_series(rule.value_metric, labels, _steady(limit, at)))
    return series, [_labels(metric, "bad", rule.match)], at


def _counter_case(rule: CounterIncreaseRule) -> Case:
    """Evaluated past the window, so a steady old count is history, not new events; one
    series rises, one appears late (a counter created at its first event)."""
    at = rule.window + rule.for_ + 8 * STEP
    before, after = int((at - 4 * STEP) / STEP), 4
    metric = catalog.BY_NAME[rule.metric]
    rise = rule.min_increase
    return (
        [
            _series(rule.metric, _labels(metric, "bad", rule.match), f"0x{before} {rise}x{after}"),
            _series(rule.metric, _labels(metric, "new", rule.match), f"_x{before} {rise}x{after}"),
            _series(rule.metric, _labels(metric, "ok", rule.match), _steady(3 * rise, at)),
        ],
        [_labels(metric, "bad", rule.match), _labels(metric, "new", rule.match)],
        at,
    )


def _error_ratio_case(rule: ErrorRatioRule, endpoints: Mapping[str, dict[str, str]]) -> Case:
    """The first matching endpoint fails; endpoints the rule does not watch fail too, and
    the other window of the watched one, which must not fire."""
    at = rule.for_ + 4 * STEP
    metric = catalog.API_OVERLOAD_RATIO if rule.overload_only else catalog.API_ERROR_RATIO
    watched = [
        name
        for name, labels in sorted(endpoints.items())
        if (not rule.endpoint or name == rule.endpoint)
        and (not rule.role or labels["role"] == rule.role)
    ]
    window = format_duration(rule.window)
    other_window = "5m" if window == "1m" else "1m"
    series = [_series(metric.name, {"endpoint": watched[0], "window": other_window}, "1x20")]
    for name in sorted(endpoints):
        ratio = 1.0 if name == watched[0] or name not in watched else rule.above / 2
        labels = {"endpoint": name, "window": window}
        series.append(_series(metric.name, labels, _steady(ratio, at)))
    return series, [dict(endpoints[watched[0]])], at


def _recovered_case(rule: RecoveredRule, routed: list[Recovery]) -> Case:
    """The hosted API of the first routed service answers every completion probe over
    the soak while its route reads local; a service whose route reads hosted does not
    fire, though its API answers as well."""
    (r, *_) = routed
    at = r.soak + 4 * STEP
    steps = int(at / STEP) + 1
    series = []
    for service, endpoint, local in ((r.service, r.endpoint, 1), ("other", "other-api", 0)):
        probe = {"endpoint": endpoint, "probe": "completion"}
        series += [
            _series(catalog.API_PROBES.name, {**probe, "result": "ok"}, f"0+1x{steps}"),
            _series(catalog.API_PROBES.name, {**probe, "result": "timeout"}, f"0x{steps}"),
            _series(
                catalog.SERVICE_ROUTE.name,
                {"service": service, "route": "local"},
                _steady(local, at),
            ),
        ]
    return series, [dict(r.labels)], at


def _target_down_case(rule: TargetDownRule) -> Case:
    """For nodes: one whose output failed to parse (`node_up` 1) is not down."""
    at = rule.for_ + 4 * STEP
    up = catalog.TARGET_UP.name
    other = "api" if rule.collector != "api" else "gpu"
    series = [
        _series(up, {"collector": rule.collector, "target": "bad"}, _steady(0, at)),
        _series(up, {"collector": rule.collector, "target": "ok"}, _steady(1, at)),
        _series(up, {"collector": other, "target": "other"}, _steady(0, at)),
    ]
    if rule.collector == "node":
        series += [
            _series(up, {"collector": "node", "target": "parsefail"}, _steady(0, at)),
            _series(catalog.NODE_UP.name, {"node": "parsefail"}, _steady(1, at)),
            _series(catalog.NODE_UP.name, {"node": "bad"}, _steady(0, at)),
        ]
    return series, [{"collector": rule.collector, TARGET_LABEL[rule.collector]: "bad"}], at


# node -> (ssh port answers, serving port answers, node_up); None: not probed
_NODES = {
    "cut": (0, 0, 1),  # the last SSH collection, before the cut, still reads up
    "sshd": (0, 1, 0),
    "engine": (1, 0, 1),
    "ok": (1, 1, 1),
    "dark": (None, None, 0),
}
_LOST = {"node": ["cut", "dark"], "ssh": ["sshd"], "serving": ["engine"]}


def _reachability_case(rule: ReachabilityRule) -> Case:
    at = rule.for_ + 4 * STEP
    series = []
    for node, (ssh, serving, collected) in _NODES.items():
        series.append(_series(catalog.NODE_UP.name, {"node": node}, _steady(collected, at)))
        for signal, up in (("ssh", ssh), ("serving", serving)):
            if up is not None:
                labels = {"node": node, "signal": signal}
                series.append(_series(catalog.NODE_LIVENESS_UP.name, labels, _steady(up, at)))
    return series, [{"node": node} for node in _LOST[rule.lost]], at


def _gpu_lost_case(rule: GpuLostRule) -> Case:
    at = rule.for_ + 4 * STEP
    lost = catalog.NODE_GPUS_LOST.name
    series = [
        _series(lost, {"node": "bad"}, _steady(2, at)),
        _series(lost, {"node": "ok"}, _steady(0, at)),
    ]
    return series, [{"node": "bad"}], at


def firing_case(
    rule: AnyRule, endpoints: Mapping[str, dict[str, str]], routed: list[Recovery]
) -> Case:
    """Series on which the rule fires for some groups only, and those alerts' labels."""
    if isinstance(rule, ThresholdRule):
        series, alerts, at = _threshold_case(rule)
    elif isinstance(rule, CounterIncreaseRule):
        series, alerts, at = _counter_case(rule)
    elif isinstance(rule, ErrorRatioRule):
        series, alerts, at = _error_ratio_case(rule, endpoints)
    elif isinstance(rule, TargetDownRule):
        series, alerts, at = _target_down_case(rule)
    elif isinstance(rule, GpuLostRule):
        series, alerts, at = _gpu_lost_case(rule)
    elif isinstance(rule, ReachabilityRule):
        series, alerts, at = _reachability_case(rule)
    elif isinstance(rule, RecoveredRule):
        series, alerts, at = _recovered_case(rule, routed)
    else:
        raise AssertionError(f"no promtool case for rule type {type(rule).__name__}")
    fixed = {"severity": rule.severity, "rule": rule.name}
    kept = alert_labels(rule, endpoints, routed)
    return series, [{k: a[k] for k in kept if k in a} | fixed for a in alerts], at


def _unit_tests(
    rule: AnyRule, endpoints: Mapping[str, dict[str, str]], routed: list[Recovery]
) -> list[dict[str, Any]]:
    """Fires at the end of `for` (and not a step before, when it has one)."""
    series, alerts, at = firing_case(rule, endpoints, routed)
    name = alert_name(rule.name)
    expected = [{"exp_labels": labels} for labels in alerts]
    checks: list[dict[str, Any]] = [
        {"eval_time": prom_duration(at), "alertname": name, "exp_alerts": expected}
    ]
    if rule.for_ >= 2 * STEP and not isinstance(rule, CounterIncreaseRule):
        early = prom_duration(rule.for_ - STEP)
        checks.append({"eval_time": early, "alertname": name, "exp_alerts": []})
    return [{"interval": prom_duration(STEP), "input_series": series, "alert_rule_test": checks}]


def _without_annotations(text: str) -> str:
    """The rules file minus annotations: the generated cases check expressions and labels;
    annotation rendering has its own hand-written test."""
    data = yaml.safe_load(text)
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return yaml.safe_dump(data, sort_keys=False)


def _run_unit_tests(promtool: str, tmp_path: Path, rules: str, tests: list[dict]) -> None:
    (tmp_path / "rules.yml").write_text(rules)
    spec = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": prom_duration(STEP),
        "tests": tests,
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = _promtool(promtool, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("source", ["builtin", "example"])
def test_export_passes_promtool_check_rules(
    promtool: str, example: Config, tmp_path: Path, source: str
) -> None:
    config = example if source == "example" else Config()
    path = tmp_path / "rules.yml"
    path.write_text(export(config).text)
    result = _promtool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_exported_rule_fires_on_bad_series_only(
    promtool: str, example: Config, tmp_path: Path
) -> None:
    endpoints = endpoint_labels(example)
    result = export(example)
    rules = [r for r in active_rules(example.rules) if alert_name(r.name) in result.alerts]
    assert [alert_name(r.name) for r in rules] == list(result.alerts)
    routed = recoveries(example, endpoints)
    tests = [t for rule in rules for t in _unit_tests(rule, endpoints, routed)]
    _run_unit_tests(promtool, tmp_path, _without_annotations(result.text), tests)


def test_example_config_exports_every_builtin_and_its_custom_rule(example: Config) -> None:
    result = export(example)
    expected = [alert_name(r.name) for r in (*BUILTIN, *example.rules.custom)]
    assert list(result.alerts) == expected
    assert result.skipped == {}


def test_rules_without_a_matching_endpoint_are_left_out_with_the_reason() -> None:
    result = export(Config())
    assert set(result.skipped) == {"upstream-overloaded", "upstream-recovered", "local-pool-errors"}
    assert "# Not exported: local-pool-errors: no configured endpoint matches it." in result.text
    assert (
        "# Not exported: upstream-recovered: no service has a route to a hosted endpoint."
        in result.text
    )


def test_alerts_render_values_labels_and_the_runbook_command(
    promtool: str, example: Config, tmp_path: Path
) -> None:
    # GPUs 3 and 7 lost from 30 s on: `since` is when the alert became active, not now.
    gpus = [
        _series("reliability_node_gpus_lost", {"node": "gpu-1"}, "0x1 2x7"),
        _series("reliability_node_gpus_expected", {"node": "gpu-1"}, "8x8"),
        _series("reliability_node_gpus_visible", {"node": "gpu-1"}, "8x1 6x7"),
        *(
            _series("reliability_gpu_lost", {"node": "gpu-1", "gpu": g}, "0x1 1x7")
            for g in ("3", "7")
        ),
        _series("reliability_gpu_lost", {"node": "gpu-1", "gpu": "0"}, "0x8"),
    ]
    errors = [
        _series("reliability_api_error_ratio", {"endpoint": "chat-lb", "window": "1m"}, "0.5x8")
    ]
    node_failover = "reliability runbook run node-failover --param 'node=gpu-1'"
    tests = [
        {
            "interval": "15s",
            "input_series": gpus + errors,
            "alert_rule_test": [
                {
                    "eval_time": "90s",
                    "alertname": "GpuLost",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "node": "gpu-1",
                                "severity": "critical",
                                "rule": "gpu-lost",
                            },
                            "exp_annotations": {
                                "summary": "gpu-1: 2 of 8 GPUs lost",
                                "description": (
                                    "gpu-1 has 6 of 8 GPUs working since 1970-01-01 00:00:30 "
                                    "+0000 UTC; lost: 3, 7. The serving container cannot use "
                                    "them until the node is rebooted: fail the node over."
                                ),
                                "runbook": node_failover,
                            },
                        }
                    ],
                },
                {
                    "eval_time": "90s",
                    "alertname": "LocalPoolErrors",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                **endpoint_labels(example)["chat-lb"],
                                "severity": "critical",
                                "rule": "local-pool-errors",
                            },
                            "exp_annotations": {
                                "summary": "chat-lb: 50% of probes failing",
                                "description": (
                                    "50% of probes to chat-lb failed over the last 1m, above 20%, "
                                    "since 1970-01-01 00:00:00 +0000 UTC. Switch the service to "
                                    "its other pool, or roll back a new image."
                                ),
                                "runbook": (
                                    "reliability runbook run blue-green --param 'service=chat' "
                                    "--param 'pool=green'"
                                ),
                            },
                        }
                    ],
                },
            ],
        }
    ]
    _run_unit_tests(promtool, tmp_path, export(example).text, tests)


def test_every_metric_in_the_rules_file_is_in_the_catalogue(example: Config) -> None:
    text = export(example).text
    data = yaml.safe_load(text)
    for group in data["groups"]:
        for rule in group["rules"]:
            names = re.findall(r"\breliability_[a-z0-9_]+", rule["expr"])
            # Only the daemons' own group reads Prometheus' `up` or nothing (Watchdog).
            assert names or group["name"] == "reliability-daemons", rule["alert"]
            assert set(names) <= set(catalog.BY_NAME), rule["alert"]
    in_annotations = re.findall(r"\breliability_[a-z0-9_]+", text)
    assert set(in_annotations) <= set(catalog.BY_NAME)


def test_the_cli_writes_the_same_bytes_every_time(tmp_path: Path) -> None:
    runner = CliRunner()
    first, second = tmp_path / "a.yml", tmp_path / "b.yml"
    for out in (first, second):
        result = runner.invoke(main, ["rules", "export", "-c", str(EXAMPLE), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{out}: 15 alerting rules, 4 watching the daemons themselves" in result.output
    assert first.read_bytes() == second.read_bytes()
    stdout = runner.invoke(main, ["rules", "export", "-c", str(EXAMPLE)])
    assert stdout.exit_code == 0
    assert stdout.output == first.read_text()


def test_the_cli_rejects_a_missing_config_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "export", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2


# --- rendered by a real Prometheus ------------------------------------------------------------

HOT, BUSY, LOST = {"5": 93.0, "2": 91.0}, {"1": 0.95, "3": 0.97, "6": 0.9}, "4"


def _bad_fleet() -> Snapshot:
    """One node with hot, busy, lost and XID-79 GPUs and a nearly full disk, and a busy
    hosted API: what the daemon would serve on /metrics."""
    snapshot = Snapshot()
    gpu: list[Sample] = []
    for i in map(str, range(8)):
        gpu.append(Sample(catalog.GPU_LOST, ("gpu-1", i), 1.0 if i == LOST else 0.0))
        if i == LOST:
            continue
        gpu.append(Sample(catalog.GPU_UTILIZATION, ("gpu-1", i), BUSY.get(i, 0.3)))
        gpu.append(Sample(catalog.GPU_TEMPERATURE, ("gpu-1", i), HOT.get(i, 60.0)))
        gpu.append(Sample(catalog.GPU_SLOWDOWN_TEMPERATURE, ("gpu-1", i), 90.0))
    gpu += [
        Sample(catalog.NODE_GPUS_EXPECTED, ("gpu-1",), 8.0),
        Sample(catalog.NODE_GPUS_VISIBLE, ("gpu-1",), 7.0),
        Sample(catalog.NODE_GPUS_LOST, ("gpu-1",), 1.0),
        Sample(catalog.GPU_XID_ERRORS, ("gpu-1", "2", "79", "reboot_node"), 1.0),
    ]
    node = [
        Sample(catalog.NODE_PATH_FREE, ("gpu-1", "/"), 200e9),
        Sample(catalog.NODE_PATH_SIZE, ("gpu-1", "/"), 400e9),
        Sample(catalog.NODE_PATH_FREE, ("gpu-1", "/var/lib/docker"), 20e9),
        Sample(catalog.NODE_PATH_SIZE, ("gpu-1", "/var/lib/docker"), 400e9),
    ]
    api = [Sample(catalog.API_OVERLOAD_RATIO, ("hosted", "15s"), 0.8)]
    for collector, target, samples in (("gpu", "gpu-1", gpu), ("node", "gpu-1", node)):
        snapshot.publish(collector, target, ok=True, duration=0.1, samples=samples)
    snapshot.publish("api", "hosted", ok=False, duration=0.1, samples=api)
    return snapshot


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """The bad fleet's exposition over HTTP, for Prometheus to scrape."""
    body = _bad_fleet().exposition().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _since(alert: dict[str, Any]) -> str:
    """The alert's `activeAt` as Go's humanizeTimestamp shows a Unix time in seconds."""
    active = datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00"))
    return active.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


@pytest.mark.timeout(120)
def test_a_real_prometheus_renders_the_numbers_of_the_series_never_a_placeholder(
    tmp_path: Path, metrics_url: str
) -> None:
    quick = {"for": "2s"}
    config = Config.model_validate(
        {
            "endpoints": [
                {"name": "hosted", "url": "http://127.0.0.1:9", "role": "hosted", "model": "m"}
            ],
            "rules": {
                "overrides": {
                    name: quick for name in ("gpu-utilization-high", "gpu-temperature-slowdown")
                }
                | {"disk-almost-full": quick}
            },
        }
    )
    rules = tmp_path / "rules.yml"
    rules.write_text(export(config).text)
    expected = {
        "GpuUtilizationHigh",
        "GpuTemperatureSlowdown",
        "GpuXidCritical",
        "GpuLost",
        "DiskAlmostFull",
        "UpstreamOverloaded",
    }
    with PrometheusServer(tmp_path / "prometheus", [metrics_url], rules=rules) as prometheus:
        deadline = time.monotonic() + 60
        while True:
            body = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()
            alerts = {a["labels"]["alertname"]: a for a in body["data"]["alerts"]}
            firing = {name for name, a in alerts.items() if a["state"] == "firing"}
            if expected <= firing:
                break
            assert time.monotonic() < deadline, f"firing {sorted(firing)}, not {sorted(expected)}"
            time.sleep(0.5)
    shown = {
        name: (a["annotations"]["summary"], a["annotations"]["description"], _since(a))
        for name, a in alerts.items()
    }
    for name, (summary, description, _) in shown.items():
        for text in (summary, description):
            assert "?" not in text and "reliability_" not in text, (name, text)
    summary, description, since = shown["GpuUtilizationHigh"]
    assert summary == "gpu-1: GPU utilisation 97% above 85% on 3 of 7 GPUs"
    assert description.startswith(
        f"GPUs 1, 3, 6 on gpu-1 have been busier than 85% for over 2s (busiest 97%) since {since}:"
    )
    summary, description, since = shown["GpuTemperatureSlowdown"]
    assert summary == "gpu-1: GPU temperature 93°C at slowdown 90°C"
    assert description.startswith(
        "GPU 5 on gpu-1 is at 93°C, at or above its slowdown temperature 90°C, since "
        f"{since} (2 of 7 GPUs hot)"
    )
    summary, description, since = shown["GpuXidCritical"]
    assert summary == "gpu-1: XID 79 on GPU 2 (GPU has fallen off the bus), action: reboot_node"
    assert description.startswith(
        "The driver on gpu-1 reported XID 79 (GPU has fallen off the bus) on GPU 2 at "
        f"{since}; NVIDIA's recommended action is reboot_node."
    )
    summary, description, since = shown["GpuLost"]
    assert summary == "gpu-1: 1 of 8 GPUs lost"
    assert description.startswith(f"gpu-1 has 7 of 8 GPUs working since {since}; lost: 4.")
    summary, description, since = shown["DiskAlmostFull"]
    assert summary == "gpu-1: disk /var/lib/docker 5% free"
    assert description.startswith(
        f"/var/lib/docker on gpu-1 has 20GB free of 400GB (5%, below 10%) since {since}."
    )
    summary, description, since = shown["UpstreamOverloaded"]
    assert summary == "hosted: hosted API overloaded, 80% of probes busy (503/529/429)"
    assert description.startswith(
        "80% of probes to hosted over the last 15s were answered busy (503, 529 or 429), "
        f"above 50%, since {since}."
    )


# --- the daemons' own alerts (selfwatch.py) ---------------------------------------------------

DAEMON = {"job": "reliability", "severity": "critical", "component": "reliability"}


def _watched(**cluster: object) -> str:
    """The export of a config with `cluster`, annotations and all."""
    return export(Config.model_validate({"cluster": cluster})).text


def test_a_dead_daemon_pages_per_instance_and_too_few_members_page_once(
    promtool: str, tmp_path: Path
) -> None:
    a, b = (
        {"job": "reliability", "instance": "a:9464"},
        {"job": "reliability", "instance": "b:9464"},
    )
    # b dies at 75 s ("1x4": five ones); another job's target down is not a daemon.
    series = [
        _series("up", a, "1x20"),
        _series("up", b, "1x4 0x16"),
        _series("up", {"job": "node", "instance": "n:9100"}, "0x20"),
        _series("reliability_cluster_members", a, "2x4 1x16"),
    ]
    alerts = [
        {"exp_labels": DAEMON | {"instance": "b:9464"}},
        {"exp_labels": {k: v for k, v in DAEMON.items() if k != "job"}},
    ]
    tests = [
        {
            "interval": "15s",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "60s", "alertname": "ReliabilityDaemonDown", "exp_alerts": []},
                # Down since 75 s, firing after its `for` of 1m.
                {"eval_time": "120s", "alertname": "ReliabilityDaemonDown", "exp_alerts": []},
                {"eval_time": "135s", "alertname": "ReliabilityDaemonDown", "exp_alerts": alerts},
            ],
        }
    ]
    text = _without_annotations(_watched(expected_members=2))
    _run_unit_tests(promtool, tmp_path, text, tests)


def test_no_daemon_scraped_at_all_pages_and_a_full_cluster_does_not(
    promtool: str, tmp_path: Path
) -> None:
    """A Prometheus that scrapes no daemon (all gone from discovery) is not silent."""
    up = {"job": "reliability", "instance": "a:9464"}
    quiet = {"interval": "15s", "input_series": [_series("up", up, "1x10")]}
    tests = [
        quiet
        | {
            "alert_rule_test": [
                {"eval_time": "120s", "alertname": "ReliabilityDaemonDown", "exp_alerts": []}
            ]
        },
        {
            "interval": "15s",
            "input_series": [_series("up", {"job": "other", "instance": "x"}, "1x10")],
            "alert_rule_test": [
                {
                    "eval_time": "90s",
                    "alertname": "ReliabilityDaemonDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "component": "reliability"},
                            "exp_annotations": {
                                "summary": "0 of 1 reliability daemons running",
                                "description": (
                                    "Fewer daemons than cluster.expected_members (1) are up, "
                                    "as Prometheus scrapes job reliability or as they count "
                                    "each other in the database. The others take its nodes "
                                    "and endpoints; with none left nothing watches the fleet "
                                    "and no incident is paged. On that host: `systemctl "
                                    "status reliability` or `docker compose ps`, and its log "
                                    "(`journalctl -u reliability`); `reliability cluster "
                                    "status` lists the members. Start it again, or lower "
                                    "cluster.expected_members if it was retired."
                                ),
                            },
                        }
                    ],
                }
            ],
        },
    ]
    _run_unit_tests(promtool, tmp_path, _watched(), tests)


def test_no_leader_database_down_and_the_watchdog(promtool: str, tmp_path: Path) -> None:
    a, b = (
        {"job": "reliability", "instance": "a:9464"},
        {"job": "reliability", "instance": "b:9464"},
    )
    series = [
        # a leads until 30 s, nobody from 45 s (b never does).
        _series("reliability_cluster_leader", a, "1x2 0x10"),
        _series("reliability_cluster_leader", b, "0x12"),
        # b's database heartbeat fails from 45 s on.
        _series("reliability_database_up", a, "1x12"),
        _series("reliability_database_up", b, "1x2 0x10"),
    ]
    labels = {"severity": "critical", "component": "reliability"}
    tests = [
        {
            "interval": "15s",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "90s", "alertname": "ReliabilityNoLeader", "exp_alerts": []},
                {
                    "eval_time": "105s",
                    "alertname": "ReliabilityNoLeader",
                    "exp_alerts": [{"exp_labels": labels}],
                },
                {"eval_time": "90s", "alertname": "ReliabilityDatabaseDown", "exp_alerts": []},
                {
                    "eval_time": "105s",
                    "alertname": "ReliabilityDatabaseDown",
                    "exp_alerts": [{"exp_labels": labels | b}],
                },
                {
                    "eval_time": "0s",
                    "alertname": "Watchdog",
                    "exp_alerts": [{"exp_labels": {"severity": "none"}}],
                },
            ],
        }
    ]
    _run_unit_tests(promtool, tmp_path, _without_annotations(_watched()), tests)


def test_the_scrape_job_and_expected_members_are_validated() -> None:
    from pydantic import ValidationError

    for cluster in ({"expected_members": 0}, {"scrape_job": "my job"}):
        with pytest.raises(ValidationError) as raised:
            Config.model_validate({"cluster": cluster})
        assert next(iter(cluster)) in str(raised.value)
    assert 'up{job="daemons"}' in _watched(scrape_job="daemons")
