"""A rule written wrong in the config file: every mistake reported with its file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reliability.cli_support import load_config
from reliability.config import ConfigError
from reliability.detect.evaluator import Evaluator


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
