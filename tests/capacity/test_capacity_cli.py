"""`reliability capacity test` as an operator runs it: against inference stand-ins of a
known capacity (max-num-seqs seats, a fixed time per token), refused when unbounded or
when no balancer tells the pool's share of production traffic (tests/capacity/
test_production_share.py reads real ones), recorded beside the previous baseline."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import CliRunner, Result

from reliability import catalog, db, web
from reliability.capacity import service
from reliability.capacity.models import CapacityTest, Purpose
from reliability.cli import main
from reliability.collect.base import Sample
from reliability.collect.snapshot import Snapshot
from reliability.testing.inference import REPLY_TOKENS, InferenceSpec, listen, uvicorn_config
from reliability.testing.inference_group import ServerGroup

SEATS = 2  # max-num-seqs of each stand-in
TOKEN_S = 0.05  # so an answer takes REPLY_TOKENS * TOKEN_S = 0.8 s
NODES = ("127.0.61.1", "127.0.61.2")
# Two nodes of SEATS seats each, every answer ANSWER_S long: the requests/s they can hold.
ANSWER_S = REPLY_TOKENS * TOKEN_S
KNOWN_CAPACITY = len(NODES) * SEATS / ANSWER_S


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def pool() -> Iterator[int]:
    """Pool green's two nodes, each a stand-in of SEATS seats; yields their port."""
    with ServerGroup() as group:
        first = group.start(
            InferenceSpec(pool="green", host=NODES[0], max_num_seqs=SEATS, token_s=TOKEN_S)
        )
        for address in NODES[1:]:
            group.start(
                InferenceSpec(
                    pool="green",
                    host=address,
                    port=first.port,
                    max_num_seqs=SEATS,
                    token_s=TOKEN_S,
                )
            )
        yield first.port


@pytest.fixture
def daemon_listen() -> Iterator[str]:
    """The daemon's HTTP surface (its real app) with the GPU power its collectors saw:
    the green nodes' two GPUs draw 350 W each, blue's node 999 W."""
    snapshot = Snapshot()
    for node, watts in (("gpu-1", 999.0), ("gpu-2", 350.0), ("gpu-3", 350.0)):
        samples = [Sample(catalog.GPU_POWER_DRAW, (node, str(gpu)), watts) for gpu in (0, 1)]
        snapshot.publish("gpu", node, ok=True, duration=0.1, samples=samples)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(web.build_app(snapshot, readiness=[])))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def config(tmp_path: Path, pool: int, daemon_listen: str) -> str:
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    path = tmp_path / "reliability.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": url},
                "http": {"listen": daemon_listen},
                "nodes": [
                    {"name": "gpu-1", "address": "127.0.0.1", "pool": "blue"},
                    *(
                        {"name": f"gpu-{i + 2}", "address": address, "pool": "green"}
                        for i, address in enumerate(NODES)
                    ),
                ],
                "services": [
                    {
                        "name": "chat",
                        "pools": ["blue", "green"],
                        "active_pool": "blue",
                        "port": pool,
                        # A request that waits for a seat waits a whole answer: it misses.
                        "objectives": {
                            "ttft_p95": ANSWER_S / 2,
                            "e2e_p95": ANSWER_S * 1.5,
                            "error_ratio": 0.01,
                        },
                        "capacity": {"max_users": 64, "max_duration": "1m", "prompt_words": 32},
                    }
                ],
            }
        )
    )
    return str(path)


def test_finds_the_pools_known_capacity_within_20_percent_beside_its_baseline(config: str):
    engine = db.make_engine(yaml.safe_load(Path(config).read_text())["database"]["url"])
    now = datetime.now(UTC)
    with db.session_factory(engine)() as s, s.begin():
        service.record(
            s,
            test=CapacityTest(
                service="chat", pool="green", purpose=Purpose.baseline, started_at=now,
                finished_at=now, by="ci", nodes=2, held=True, users=4, qps=10.0,
                tokens_per_s=160.0, ttft_p50_s=0.05, ttft_p95_s=0.1, e2e_p95_s=0.9,
                error_ratio=0.0, prompt_tokens=32, completion_tokens=16,
                gpu_power_watts=None, steps=[],
            ),
        )  # fmt: skip
    engine.dispose()

    result = run(
        "capacity", "test", "chat", "--pool", "green", "--users", "8", "--steps", "4",
        "--duration", "16s", "--spawn-rate", "50", "--allow-unknown-share", "-c", config,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "within objectives" in result.output  # a step's line
    assert "TTFT p95" in result.output and "> 0.4s" in result.output  # the step that missed
    assert "PREVIOUS BASELINE" in result.output
    qps_row = next(
        row for row in result.output.splitlines() if row.strip().startswith("requests/s")
    )
    assert qps_row.split()[2] == "10.00"  # the previous baseline, then the change
    assert qps_row.split()[3].startswith("-")
    listed = run("capacity", "list", "chat", "--json", "-c", config)
    (baseline,) = json.loads(listed.output)
    assert baseline["pool"] == "green" and baseline["held"]
    assert baseline["qps"] == pytest.approx(KNOWN_CAPACITY, rel=0.2)
    assert baseline["users"] == len(NODES) * SEATS
    assert baseline["completion_tokens"] == REPLY_TOKENS
    assert baseline["tokens_per_s"] == pytest.approx(baseline["qps"] * REPLY_TOKENS, rel=0.1)
    assert baseline["prompt_tokens"] == 32
    assert baseline["gpu_power_watts"] == 4 * 350.0  # the green nodes' GPUs, not blue's


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope", "--pool", "green"], "no service is named 'nope'"),
        (["chat", "--pool", "red"], "chat has no pool 'red'; its pools: blue, green"),
        (
            ["chat", "--pool", "blue", "--duration", "9s"],
            "share of chat's production traffic is unknown: services.chat has no load_balancer",
        ),
        (["chat", "--pool", "green", "--users", "0"], "--users 0 is not bounded"),
        (["chat", "--pool", "green", "--users", "65"], "capacity.max_users"),
        (["chat", "--pool", "green", "--duration", "0"], "--duration 0s is not bounded"),
        (["chat", "--pool", "green", "--duration", "2h"], "capacity.max_duration"),
        (
            ["chat", "--pool", "green", "--duration", "9s", "--spawn-rate", "0"],
            "--spawn-rate 0 must",
        ),
    ],
)
def test_refuses_what_is_unknown_unbounded_or_serving_production(
    config: str, args: list[str], says: str
):
    result = run("capacity", "test", *args, "-c", config)
    assert result.exit_code == 2
    assert says in result.output
    assert "no baseline yet" in run("capacity", "list", "-c", config).output.lower()
