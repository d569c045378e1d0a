"""`reliability cost report`: the arithmetic against a case worked by hand, the PNG chart,
and a report that names the prices it lacks and shows the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result

from reliability import db
from reliability.capacity import service
from reliability.capacity.cost import break_even_qps
from reliability.capacity.models import CapacityTest, Purpose
from reliability.cli import main

PRICES = {
    "currency": "CNY",
    "node_price": 40_000,
    "staff_per_month": 50_000,  # two people at 25,000
    "energy_price_per_kwh": 0.8,
    "hosted": {"input_per_million_tokens": 2.0, "output_per_million_tokens": 8.0},
}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_config(tmp_path: Path, database_url: str, cost: dict[str, Any]) -> str:
    path = tmp_path / "reliability.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": database_url},
                "nodes": [{"name": "gpu-1", "address": "127.0.0.1", "pool": "blue"}],
                "services": [{"name": "chat", "pools": ["blue"], "active_pool": "blue"}],
                "cost": cost,
            }
        )
    )
    return str(path)


@pytest.fixture
def baseline(database_url: str, engine: sa.Engine) -> None:
    """Pool blue held 20 requests/s on 2 nodes drawing 1600 W; 500 + 250 tokens a request."""
    now = datetime.now(UTC)
    with db.session_factory(engine)() as s, s.begin():
        service.record(
            s,
            test=CapacityTest(
                service="chat", pool="blue", purpose=Purpose.baseline, started_at=now,
                finished_at=now, by="ci", nodes=2, held=True, users=16, qps=20.0,
                tokens_per_s=5000.0, ttft_p50_s=0.2, ttft_p95_s=0.5, e2e_p95_s=4.0,
                error_ratio=0.0, prompt_tokens=500, completion_tokens=250,
                gpu_power_watts=1600.0, steps=[],
            ),
        )  # fmt: skip


def test_the_report_matches_the_case_worked_by_hand(tmp_path: Path, database_url: str, baseline):
    config = write_config(tmp_path, database_url, PRICES)
    chart = tmp_path / "cost.png"
    result = run(
        "cost", "report", "--qps", "100", "--years", "3", "--chart", str(chart), "--json",
        "-c", config,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    # 100 requests/s at 10 per node: 10 nodes.
    assert r["nodes"] == 10
    assert r["hardware"] == pytest.approx(400_000)
    # 800 W a node x 0.8 per kWh x 26,280 hours x 10 nodes.
    assert r["energy"] == pytest.approx(0.8 * 0.8 * 26_280 * 10)  # 168,192
    assert r["staff"] == pytest.approx(1_800_000)
    assert r["self_hosted"] == pytest.approx(2_368_192)
    # (500 x 2 + 250 x 8) / 1e6 a request, 100 a second for 94,608,000 seconds.
    assert r["hosted_per_request"] == pytest.approx(0.003)
    assert r["hosted"] == pytest.approx(28_382_400)
    # One node (40,000 + 16,819.2) and the staff, against 0.003 x 94,608,000 per req/s.
    assert r["break_even_qps"] == pytest.approx(1_856_819.2 / 283_824)
    # The hardware up front, then 733,728 a month saved: paid back in 0.55 months.
    assert r["break_even_month"] == pytest.approx(400_000 / 733_728)
    assert r["missing"] == []
    assert r["chart"] == str(chart)
    png = chart.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_missing_prices_are_named_and_the_rest_still_shown(
    tmp_path: Path, database_url: str, baseline
):
    config = write_config(tmp_path, database_url, {"staff_per_month": 50_000})
    result = run("cost", "report", "--qps", "100", "--no-chart", "-c", config)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "missing: cost.node_price" in out
    assert "missing: cost.energy_price_per_kwh" in out
    assert "missing: cost.hosted.input_per_million_tokens" in out
    assert "CNY 1,800,000" in out  # the staff, which needs no other price
    assert "10 nodes x ?" in out
    assert "Break-even" not in out


def test_without_a_baseline_the_report_asks_for_a_capacity_test(
    tmp_path: Path, database_url: str, engine: sa.Engine
):
    config = write_config(tmp_path, database_url, PRICES)
    result = run("cost", "report", "--json", "--no-chart", "-c", config)
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["nodes"] is None and r["self_hosted"] is None and r["hosted"] is None
    assert "a capacity baseline (reliability capacity test)" in r["missing"]


def test_no_break_even_when_a_node_costs_more_than_the_requests_it_serves_would_hosted():
    # A node (100,000 over the period) serves 5 req/s; hosted, 5 req/s cost 5 x 18,000.
    assert break_even_qps(staff=0, per_node=100_000, qps_per_node=5, hosted_per_qps=18_000) is None
    # Dearer hosting: self-hosting wins from 100,000 / 25,000 = 4 req/s, on one node.
    assert break_even_qps(
        staff=0, per_node=100_000, qps_per_node=5, hosted_per_qps=25_000
    ) == pytest.approx(4.0)
