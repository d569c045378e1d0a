"""Rendezvous hashing shares the targets out: every key to exactly one member, evenly, and
a member joining or leaving moves only its own share."""

from __future__ import annotations

from pathlib import Path

from reliability.cluster.shards import Shards, assign, owner
from reliability.config import load

KEYS = [f"node:gpu-{i}" for i in range(600)] + [f"endpoint:api-{i}" for i in range(400)]


def test_every_key_has_exactly_one_owner_and_the_shares_are_even():
    members = ["a", "b", "c"]
    shares = assign(KEYS, members)
    held = [k for keys in shares.values() for k in keys]
    assert sorted(held) == sorted(KEYS)  # no gap, no overlap
    for keys in shares.values():
        assert abs(len(keys) - len(KEYS) / 3) < 0.1 * len(KEYS)


def test_a_member_leaving_moves_only_its_own_keys_and_spreads_them():
    before = assign(KEYS, ["a", "b", "c"])
    after = assign(KEYS, ["a", "b"])
    for member in ("a", "b"):
        assert set(before[member]) <= set(after[member])
    moved_to = {m: len(set(after[m]) - set(before[m])) for m in ("a", "b")}
    assert sum(moved_to.values()) == len(before["c"])
    assert min(moved_to.values()) > 0.3 * len(before["c"])


def test_a_member_joining_takes_keys_only_from_the_others_about_its_share():
    before = assign(KEYS, ["a", "b"])
    after = assign(KEYS, ["a", "b", "c"])
    for member in ("a", "b"):
        assert set(after[member]) <= set(before[member])
    assert abs(len(after["c"]) - len(KEYS) / 3) < 0.1 * len(KEYS)


def test_the_owner_does_not_depend_on_the_order_members_are_listed():
    assert all(owner(k, ["a", "b", "c"]) == owner(k, ["c", "a", "b"]) for k in KEYS)
    assert owner("node:x", []) is None


def test_a_node_keeps_its_endpoints_and_a_hosted_api_keeps_the_route_that_falls_back(
    tmp_path: Path,
):
    path = tmp_path / "reliability.yaml"
    path.write_text(
        """
nodes:
  - {name: gpu-1, address: 127.0.1.1, pool: blue}
  - {name: lb, address: 127.0.1.9, role: lb}
services:
  - name: chat
    pools: [blue]
    active_pool: blue
    load_balancer:
      kind: nginx
      node: lb
      upstream_file: /etc/nginx/reliability/chat-upstream.conf
      url: http://127.0.1.9/
      route:
        file: /etc/nginx/reliability/chat-route.conf
        hosted: /etc/nginx/reliability/chat-route-hosted.conf
        local: /etc/nginx/reliability/chat-route-local.conf
endpoints:
  - {name: blue-1, url: "http://127.0.1.1:8000", model: m, service: chat}
  - {name: openai, url: "https://api.example.com", model: m, role: hosted, service: chat}
  - {name: status, url: "http://127.0.0.1:9000", kind: http}
"""
    )
    shards = Shards(load(path))
    assert shards.of_target("node", "gpu-1") == "node:gpu-1"
    assert shards.of_target("gpu", "gpu-1") == "node:gpu-1"
    assert shards.of_target("api", "blue-1") == "node:gpu-1"
    assert shards.of_target("route", "chat") == shards.of_target("api", "openai")
    assert shards.of_target("api", "status") == "endpoint:status"
    assert shards.of_labels({"node": "gpu-1", "gpu": "0"}) == "node:gpu-1"
    assert shards.of_labels({"endpoint": "openai", "service": "chat"}) == "endpoint:openai"
    assert shards.of_labels({"notifier": "slack"}) is None
    assert shards.keys == {"node:gpu-1", "node:lb", "endpoint:openai", "endpoint:status"}
