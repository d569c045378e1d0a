"""A rule written wrong in the config file: every mistake reported with its file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from reliability.catalog import GPU_TEMPERATURE
from reliability.cli_support import load_config
from reliability.config import ConfigError
from reliability.detect import builtin
from reliability.detect.builtin import ratio_windows
from reliability.detect.evaluator import Evaluator
from reliability.durations import parse_duration


def errors_of(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = tmp_path / "reliability.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, info.value.lines


def test_rule_mistakes_are_reported_at_their_lines(tmp_path):
    path, lines = errors_of(
        tmp_path,
        """\
        endpoints:
          - {name: blue-1, url: "http://10.0.0.1:8000", completion_interval: 0}
        rules:
          disabled: [gpu-utilisation-high]
          custom:
            - name: hot
              type: threshold
              metric: reliability_gpu_temperature_celsius
              value: 85
              group_by: [pool]
              summary: "{nod} is hot"
              inhibits: [node-dwn]
            - name: hot
              type: counter_increase
              metric: reliability_gpu_temperature_celsius
            - name: errors
              type: error_ratio
              endpoint: green-1
              above: 0.2
              runbook: {name: blue-green, params: {pool: "{standby_pool"}}
        """,
    )
    assert lines == [
        f"{path}:4: rules.disabled[0]: no rule is named 'gpu-utilisation-high'",
        f"{path}:10: rules.custom[0].group_by: this rule's series have no label 'pool' (node, gpu)",
        f"{path}:11: rules.custom[0].summary: unknown placeholder {{nod}}; use one of: age, "
        "count, for, gpu, gpus, node, rule, severity, since, threshold, total, value",
        f"{path}:12: rules.custom[0].inhibits[0]: no rule is named 'node-dwn'",
        f"{path}:13: rules.custom[1].name: name 'hot' is used twice",
        f"{path}:15: rules.custom[1].metric: reliability_gpu_temperature_celsius is a gauge; "
        "counter_increase needs a counter",
        f"{path}:18: rules.custom[2].endpoint: no endpoint is named 'green-1'",
        f"{path}:20: rules.custom[2].runbook.params.pool: bad template: expected '}}' before "
        "end of string (write {{ and }} for literal braces)",
    ]


def test_a_threshold_needs_one_of_value_or_value_metric(tmp_path):
    path, lines = errors_of(
        tmp_path,
        """\
        rules:
          custom:
            - {name: a, type: threshold, metric: reliability_gpu_temperature_celsius}
        """,
    )
    assert lines == [f"{path}:3: rules.custom[0]: give exactly one of `value` or `value_metric`"]


def test_a_ratio_needs_a_divisor_with_the_same_labels(tmp_path):
    path, lines = errors_of(
        tmp_path,
        """\
        rules:
          custom:
            - name: a
              type: threshold
              metric: reliability_node_path_free_bytes
              per: reliability_node_memory_total_bytes
              op: "<"
              value: 0.1
        """,
    )
    assert lines == [
        f"{path}:6: rules.custom[0].per: reliability_node_memory_total_bytes has labels (node), "
        "not those of reliability_node_path_free_bytes (node, path)"
    ]


def test_a_valid_rule_file_builds_an_evaluator(tmp_path):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            rules:
              disabled: [disk-almost-full]
              custom:
                - name: gpu-temperature-slowdown
                  type: threshold
                  metric: reliability_gpu_temperature_celsius
                  op: ">="
                  value_metric: reliability_gpu_slowdown_temperature_celsius
                  group_by: [node]
                  for: 30s
                  inhibits: [gpu-utilization-high]
            """
        )
    )
    names = [r.name for r in Evaluator(load_config(path)).rules]
    assert "disk-almost-full" not in names
    assert names.count("gpu-temperature-slowdown") == 1


def test_an_override_changes_only_the_fields_it_names(tmp_path):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            rules:
              overrides:
                upstream-overloaded: {above: 0.1, for: 10s, window: 90s}
                gpu-lost: {runbook: null}
            """
        )
    )
    rules = {r.name: r for r in Evaluator(load_config(path)).rules}
    busy = rules["upstream-overloaded"]
    assert (busy.above, busy.for_, busy.window) == (0.1, 10.0, 90.0)
    kept = builtin.UPSTREAM_OVERLOADED.model_dump(exclude={"above", "for_", "window"})
    assert busy.model_dump(exclude={"above", "for_", "window"}) == kept
    assert rules["gpu-lost"].runbook is None
    assert rules["node-down"] == builtin.NODE_DOWN
    # The collector is asked for the new window, labelled as the config spells it.
    assert ratio_windows(load_config(path).rules) == (60.0, 90.0, 300.0)


def test_an_override_of_a_custom_rule_applies_to_it(tmp_path):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            rules:
              custom:
                - name: hot
                  type: threshold
                  metric: reliability_gpu_temperature_celsius
                  value: 85
              overrides:
                hot: {value: 80, severity: critical}
            """
        )
    )
    (hot,) = [r for r in Evaluator(load_config(path)).rules if r.name == "hot"]
    assert (hot.value, hot.severity, hot.metric) == (80.0, "critical", GPU_TEMPERATURE.name)


def test_override_mistakes_name_the_rule_or_field_and_the_fix(tmp_path):
    path, lines = errors_of(
        tmp_path,
        """\
        rules:
          overrides:
            upstream-overloded: {above: 0.1}
            upstream-overloaded:
              value: 0.1
              for: 10s
            local-pool-errors: {above: 2, window: 1500ms}
            node-down: {name: node-gone, title: "{nod} is down"}
            gpu-lost: {title: "{nod}: lost"}
        """,
    )
    fields = (
        "above, endpoint, for, group_by, inhibits, overload_only, resolve_after, role, runbook, "
        "severity, summary, title, window"
    )
    assert lines == [
        f"{path}:3: rules.overrides.upstream-overloded: no rule is named 'upstream-overloded'; "
        "rules that can be overridden: disk-almost-full, gpu-lost, gpu-source-down, "
        "gpu-temperature-slowdown, gpu-utilization-high, gpu-xid-critical, local-pool-errors, "
        "node-down, node-ssh-unreachable, notifier-failing, serving-down, "
        "upstream-overloaded, upstream-recovered, xid-detection-off",
        f"{path}:5: rules.overrides.upstream-overloaded.value: upstream-overloaded (error_ratio "
        f"rule) has no field 'value' (its threshold is `above`); its fields: {fields}",
        f"{path}:7: rules.overrides.local-pool-errors.window: window must be a whole number of "
        "seconds from 1s to 3600s (e.g. 20s, 1m, 90s)",
        f"{path}:7: rules.overrides.local-pool-errors.above: Input should be less than or "
        "equal to 1",
        f"{path}:8: rules.overrides.node-down.name: an override cannot change `name`; write a "
        "custom rule (rules.custom) instead",
        f"{path}:9: rules.overrides.gpu-lost.title: unknown placeholder {{nod}}; use one of: "
        "age, count, expected, for, gpus, node, rule, severity, since, threshold, total, "
        "value, visible",
    ]


def test_an_override_of_a_builtin_needs_the_builtins_loaded(tmp_path):
    path, lines = errors_of(
        tmp_path,
        """\
        rules:
          builtin: false
          overrides:
            node-down: {for: 30s}
        """,
    )
    assert lines == [
        f"{path}:4: rules.overrides.node-down: no rule is named 'node-down' (rules.builtin is "
        "false); rules that can be overridden: none"
    ]


@pytest.mark.parametrize("window", ["20s", "1m", "90s", "5m", 45])
def test_an_error_ratio_window_can_be_any_whole_number_of_seconds(tmp_path, window):
    path = tmp_path / "reliability.yaml"
    written = {"name": "e", "type": "error_ratio", "above": 0.5, "window": window}
    path.write_text(yaml.safe_dump({"rules": {"custom": [written]}}))
    (rule,) = [r for r in Evaluator(load_config(path)).rules if r.name == "e"]
    assert rule.window == parse_duration(window)


@pytest.mark.parametrize("window", ["0s", "1500ms", "2h", "soon"])
def test_an_error_ratio_window_that_cannot_be_a_label_is_refused(tmp_path, window):
    path, lines = errors_of(
        tmp_path,
        f"""\
        rules:
          custom:
            - {{name: e, type: error_ratio, above: 0.5, window: {window}}}
        """,
    )
    assert len(lines) == 1 and lines[0].startswith(f"{path}:3: rules.custom[0].window: ")
