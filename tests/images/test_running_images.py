"""Known-good from what actually runs: the daemon reads, over SSH, the image each serving
container runs (real sshd, the docker stand-in), so a deploy nobody told it about, by CI
or by hand, is recorded like a runbook's and promoted after its soak."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from reliability import daemon as daemon_mod
from reliability import db
from reliability.cli_support import load_config
from reliability.images import flows
from reliability.images import service as images
from reliability.testing import docker_cli
from reliability.testing.fixtures import RIG_LB_IMAGE, RIG_LB_POOLS
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxBalancer

HOTFIX = "registry.rig.local/serving/vllm:hotfix"


def test_a_container_changed_by_hand_is_recorded_by_one_collection_and_promoted_after_its_soak(
    rig_lb: NginxBalancer, tmp_path: Path
) -> None:
    fleet = rig_lb.fleet
    url = f"sqlite:///{tmp_path / 'reliability.db'}"
    db.upgrade(url)
    path = tmp_path / "reliability.yaml"
    service = {"name": "chat", "pools": ["blue", "green"], "active_pool": "blue", "soak": "2s"}
    sections = fleet.config_sections()
    for node in sections["nodes"]:
        if node["pool"]:
            node["container"] = "vllm"  # the container the node collector watches
    config_file = {"database": {"url": url}, **sections, "services": [service]}
    path.write_text(yaml.safe_dump(config_file))
    config = load_config(path)
    daemon = daemon_mod.build(config)
    record = daemon_mod.RunningImages(config, daemon.snapshot, db.LazyEngine(url))
    sessions = db.session_factory(db.make_engine(url))

    def collect_and_record() -> list[images.ImageDeploy]:
        outcomes = daemon_mod.run_once(daemon)
        assert all(o.ok for o in outcomes if o.collector == "node"), outcomes
        record()
        with sessions() as s:
            return images.deploys(s, service="chat")

    try:
        # What runs when the daemon starts is recorded once, by the digest it was pulled at.
        started = f"vllm/vllm-openai@{fleet.state.publish_image(RIG_LB_IMAGE)}"
        first = collect_and_record()
        assert sorted((d.node, d.image) for d in first) == [(n, started) for n in RIG_LB_POOLS]

        # Someone replaces gpu-1's container by hand, by tag.
        hotfix = f"registry.rig.local/serving/vllm@{fleet.state.publish_image(HOTFIX)}"
        root = fleet.state_dir
        docker_cli.dispatch(root, "gpu-1", ["rm", "-f", "vllm"])
        run = ["run", "-d", "--name", "vllm", "-p", "8000:8000", "-l", "pool=blue", HOTFIX]
        run += ["--model", DEFAULT_MODEL]  # as vLLM, the stand-in serves nothing without it
        assert docker_cli.dispatch(root, "gpu-1", run)[2] == 0

        seen = collect_and_record()
        new = [d for d in seen if d.id not in {f.id for f in first}]
        assert [(d.node, d.image, d.run_id) for d in new] == [("gpu-1", hotfix, None)]
        assert len(collect_and_record()) == len(seen)  # recorded once, not every pass

        with sessions.begin() as s:
            soaked = new[0].deployed_at + timedelta(seconds=3)
            promoted = flows.promote_soaked(s, config=config, now=soaked)
            assert [(p.service, p.image) for p in promoted] == [("chat", hotfix)]
            assert images.known_good(s, service=config.services[0]) == hotfix
    finally:
        daemon.close()
