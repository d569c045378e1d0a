"""A gated blue-green (`--param gate=on`): the new pool is loaded at the users of the active
pool's capacity baseline before traffic moves, and a pool whose stand-ins were made slower
is refused with the margin it missed by; nothing is switched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from reliability import db
from reliability.capacity.models import CapacityTest, Purpose
from reliability.cli import main
from reliability.cli_support import load_config
from reliability.runbooks import flows
from reliability.runbooks import params as params_mod
from reliability.runbooks.executor import RunResult
from reliability.runbooks.load import load_runbooks
from reliability.runbooks.models import RunbookStep, RunStatus
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup

REPO = Path(__file__).resolve().parents[2]
POOLS = {"blue": ("127.0.62.1", "127.0.62.2"), "green": ("127.0.62.3", "127.0.62.4")}
LB = "127.0.62.9"  # never reached: the run stops at the gate


@pytest.fixture
def stand_ins() -> Iterator[dict[str, list[InferenceHandle]]]:
    """Both pools' nodes: 2 seats each, an answer in about 0.3 s."""
    with ServerGroup() as group:
        port = 0
        handles: dict[str, list[InferenceHandle]] = {}
        for pool, addresses in POOLS.items():
            for address in addresses:
                spec = InferenceSpec(
                    pool=pool, host=address, port=port, max_num_seqs=2, token_s=0.02
                )
                handle = group.start(spec)
                port = handle.port
                handles.setdefault(pool, []).append(handle)
        yield handles


@pytest.fixture
def config_path(tmp_path: Path, stand_ins: dict[str, list[InferenceHandle]]) -> Path:
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    port = stand_ins["blue"][0].port
    nodes = [
        {"name": f"{pool}-{i + 1}", "address": address, "pool": pool}
        for pool, addresses in POOLS.items()
        for i, address in enumerate(addresses)
    ]
    books = tmp_path / "runbooks"  # the shipped ones, the gate's load test shortened
    books.mkdir()
    for source in (REPO / "runbooks").glob("*.yaml"):
        (books / source.name).write_text(
            source.read_text().replace("duration: 20s", "duration: 3s")
        )
    path = tmp_path / "reliability.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": url},
                "http": {"listen": "127.0.0.1:9"},
                "nodes": [*nodes, {"name": "lb-1", "address": LB, "role": "lb", "gpus": 0}],
                "services": [
                    {
                        "name": "chat",
                        "pools": ["blue", "green"],
                        "active_pool": "blue",
                        "port": port,
                        "load_balancer": {
                            "kind": "nginx",
                            "node": "lb-1",
                            "upstream_file": "/etc/nginx/conf.d/chat-upstream.conf",
                            "url": f"http://{LB}:8080",
                        },
                        "objectives": {"ttft_p95": "1s", "e2e_p95": "2s"},
                        # The rig's blue pool carries no real traffic: it may be measured.
                        "capacity": {"max_production_share": 1.0, "prompt_words": 16},
                    }
                ],
                "runbooks_dir": str(books),
            }
        )
    )
    return path


NEW_BUILD_GATE = """
description: Gate a new build of a pool on its own baseline.
params:
  service: {type: service}
  pool: {type: pool, of: service}
steps:
  - id: gate
    action: capacity_gate
    args: {service: "{service}", pool: "{pool}", gate: {capacity: 0.5}, duration: 3s}
"""


def run_book(config_path: Path, name: str, **given: str) -> tuple[RunResult, sa.Engine]:
    config = load_config(config_path)
    book = load_runbooks(config)[name]
    values = params_mod.resolve(book, given, config)
    engine = db.make_engine(config.database_url())
    executor = flows.executor(config, engine, confirm=lambda prompt: True)
    try:
        return executor.run(book, values, actor="test"), engine
    finally:
        executor.close()


def test_a_gated_blue_green_refuses_a_slower_pool_and_switches_nothing(
    config_path: Path, stand_ins: dict[str, list[InferenceHandle]]
):
    measured = CliRunner().invoke(
        main,
        ["capacity", "test", "chat", "--pool", "blue", "--users", "4", "--steps", "1",
         "--duration", "3s", "--spawn-rate", "50", "-c", str(config_path)],
        catch_exceptions=False,
    )  # fmt: skip
    assert measured.exit_code == 0, measured.output
    for handle in stand_ins["green"]:  # a build that answers 0.4 s later
        handle.set_mode("slow", path="/v1/chat/completions", delay_s=0.4)

    result, engine = run_book(config_path, "blue-green", service="chat", pool="green", gate="on")

    assert result.status == RunStatus.failed
    assert "gate failed by" in (result.reason or "")
    assert "of pool blue's baseline" in (result.reason or "")
    with db.session_factory(engine)() as s:
        ran = {row.step for row in s.scalars(sa.select(RunbookStep))}
        tests = list(s.scalars(sa.select(CapacityTest).order_by(CapacityTest.id)))
    assert "capacity-gate" in ran and "switch" not in ran
    baseline, gate = tests
    assert (baseline.pool, baseline.purpose) == ("blue", Purpose.baseline)
    assert (gate.pool, gate.purpose, gate.users) == ("green", Purpose.gate, baseline.users)
    assert gate.qps < 0.9 * baseline.qps
    engine.dispose()


def test_a_build_that_holds_its_pools_baseline_passes_and_says_by_how_much(config_path: Path):
    (config_path.parent / "runbooks" / "new-build.yaml").write_text(NEW_BUILD_GATE)
    unmeasured, engine = run_book(config_path, "new-build", service="chat", pool="green")
    engine.dispose()
    assert unmeasured.status == RunStatus.failed
    assert "no capacity baseline of chat pool green" in unmeasured.reason
    assert "reliability capacity test chat --pool green" in unmeasured.reason

    measured = CliRunner().invoke(
        main,
        ["capacity", "test", "chat", "--pool", "green", "--users", "4", "--steps", "1",
         "--duration", "3s", "--spawn-rate", "50", "-c", str(config_path)],
        catch_exceptions=False,
    )  # fmt: skip
    assert measured.exit_code == 0, measured.output
    passed, engine = run_book(config_path, "new-build", service="chat", pool="green")
    assert passed.status == RunStatus.succeeded, passed.reason
    with db.session_factory(engine)() as s:
        (step,) = s.scalars(sa.select(RunbookStep).where(RunbookStep.run_id == passed.run_id))
    engine.dispose()
    assert "gate passed by" in json.dumps(step.log)
