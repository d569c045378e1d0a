"""The known-good image registry: what failovers and rollbacks deploy, and how a digest
earns its place (soak time without an incident, or an operator's word)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.orm import Session

from reliability.cli import main
from reliability.cli_support import load_config
from reliability.config import Config
from reliability.images import flows
from reliability.images import service as images
from reliability.incidents import service as incidents

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OLD = "registry.example.com/vllm@sha256:" + "1" * 64
NEW = "registry.example.com/vllm@sha256:" + "2" * 64


@pytest.fixture
def config(tmp_path: Path, database_url: str, engine) -> Config:
    path = tmp_path / "reliability.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": database_url},
                "nodes": [
                    {"name": "gpu-1", "address": "127.0.0.1", "pool": "blue"},
                    {"name": "gpu-2", "address": "127.0.0.1", "pool": "green"},
                ],
                "services": [
                    {
                        "name": "chat",
                        "pools": ["blue", "green"],
                        "active_pool": "blue",
                        "soak": "30m",
                    }
                ],
            }
        )
    )
    return load_config(path)


def deploy(session: Session, image: str, at: datetime, node: str = "gpu-1") -> None:
    images.record_deploy(session, service="chat", node=node, image=image, at=at, run_id=None)


def test_no_known_good_image_says_how_to_set_one(session: Session, config: Config) -> None:
    with pytest.raises(images.NoKnownGood, match="images mark-good chat REF@sha256"):
        images.known_good(session, service=config.services[0])


def test_the_config_image_pinned_by_digest_is_the_first_known_good(
    session: Session, config: Config
) -> None:
    pinned = config.services[0].model_copy(update={"image": OLD})
    assert images.known_good(session, service=pinned) == OLD


def test_marking_good_makes_the_newest_mark_the_one_used(session: Session, config: Config) -> None:
    images.mark_good(session, service="chat", image=OLD, by="alice", at=T0)
    images.mark_good(session, service="chat", image=NEW, by="bob", at=T0 + timedelta(hours=1))
    again = images.mark_good(
        session, service="chat", image=OLD, by="carol", at=T0 + timedelta(hours=2)
    )

    assert again.by == "alice"  # marking twice keeps the first record
    assert images.known_good(session, service=config.services[0]) == NEW


def test_a_digest_is_promoted_after_its_soak_without_an_incident(
    session: Session, config: Config
) -> None:
    deploy(session, NEW, T0)

    assert flows.promote_soaked(session, config=config, now=T0 + timedelta(minutes=29)) == []
    promoted = flows.promote_soaked(session, config=config, now=T0 + timedelta(minutes=31))

    assert [(p.service, p.image) for p in promoted] == [("chat", NEW)]
    assert images.known_good(session, service=config.services[0]) == NEW
    assert images.known_good_rows(session, service="chat")[0].by == "soak"
    assert flows.promote_soaked(session, config=config, now=T0 + timedelta(hours=2)) == []  # once


def test_an_incident_on_a_node_of_the_service_during_the_soak_blocks_promotion(
    session: Session, config: Config
) -> None:
    deploy(session, NEW, T0)
    incidents.open_or_update(
        session,
        fingerprint="rule:gpu-lost:gpu-2",
        title="gpu-2: GPU lost",
        severity="critical",
        source="rule",
        labels={"node": "gpu-2"},
        at=T0 + timedelta(minutes=5),
    )

    assert flows.promote_soaked(session, config=config, now=T0 + timedelta(hours=1)) == []
    with pytest.raises(images.NoKnownGood):
        images.known_good(session, service=config.services[0])


def test_an_image_not_pinned_by_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="not pinned by digest"):
        images.digest_of("registry.example.com/vllm:latest")


def test_cli_mark_good_then_list_shows_it_as_the_known_good_image(config: Config) -> None:
    c = str(config.source)
    runner = CliRunner()

    marked = runner.invoke(main, ["images", "mark-good", "chat", NEW, "--by", "alice", "-c", c])
    listed = runner.invoke(main, ["images", "list", "-c", c, "--json"])
    refused = runner.invoke(main, ["images", "mark-good", "chat", "vllm:latest", "-c", c])
    unknown = runner.invoke(main, ["images", "mark-good", "search", NEW, "-c", c])

    assert marked.exit_code == 0, marked.output
    assert f"chat: {NEW} is known-good" in marked.output
    assert json.loads(listed.output)["known_good"] == {"chat": NEW}
    assert refused.exit_code == 2 and "not pinned by digest" in refused.output
    assert unknown.exit_code == 2 and "no service is named 'search'" in unknown.output


def test_cli_record_takes_a_pipelines_deploy_pinned_by_digest_and_refuses_a_tag(
    config: Config,
) -> None:
    c = str(config.source)
    runner = CliRunner()

    one = runner.invoke(
        main, ["images", "record", "chat", NEW, "--node", "gpu-1", "-c", c, "--json"]
    )
    every = runner.invoke(main, ["images", "record", "chat", OLD, "-c", c])
    tag = runner.invoke(main, ["images", "record", "chat", "registry.example.com/vllm:v2", "-c", c])
    stranger = runner.invoke(main, ["images", "record", "chat", NEW, "--node", "lb-9", "-c", c])
    listed = runner.invoke(main, ["images", "list", "-c", c, "--json"])

    assert one.exit_code == 0, one.output
    assert [(d["node"], d["image"]) for d in json.loads(one.output)] == [("gpu-1", NEW)]
    assert every.exit_code == 0, every.output
    assert f"chat: {OLD} recorded as deployed on gpu-1, gpu-2" in every.output
    assert tag.exit_code == 2
    assert "'registry.example.com/vllm:v2' is not pinned by digest (REF@sha256:<64 hex>)" in (
        tag.output
    )
    assert "docker inspect --format '{{index .RepoDigests 0}}' IMAGE" in tag.output
    assert stranger.exit_code == 2 and "--node lb-9: not a node of chat's pools" in stranger.output
    deploys = json.loads(listed.output)["deploys"]
    assert sorted((d["node"], d["image"], d["run_id"]) for d in deploys) == [
        ("gpu-1", OLD, None),
        ("gpu-1", NEW, None),
        ("gpu-2", OLD, None),
    ]
