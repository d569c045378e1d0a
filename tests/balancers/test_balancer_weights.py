"""Weights, as a canary sets them: each server's `weight` written where the kind writes it
(nginx `weight=N`, HAProxy `weight N`), an existing one replaced, every other byte kept,
new servers added with theirs; a weight the kind refuses is refused before any write."""

from __future__ import annotations

import pytest

from reliability import balancers
from reliability.balancers.base import Edit, MembershipError, Server
from reliability.config import LoadBalancerConfig


def balancer(kind: str) -> balancers.Balancer:
    return balancers.for_config(
        LoadBalancerConfig(
            kind=kind, node="lb-1", upstream_file="/etc/lb/chat.conf", url="http://10.0.0.2/"
        )
    )


NGINX = """\
upstream chat {
    server 10.0.0.11:8000 max_fails=2;  # gpu-1
    server 10.0.0.12:8000 weight=7 down;
    keepalive 16;
}
"""
HAPROXY = """\
backend chat
    balance roundrobin
    server gpu-1 10.0.0.11:8000 check  # blue
    server gpu-2 10.0.0.12:8000 check weight 7 inter 2s
"""


def test_nginx_weights_are_set_or_replaced_and_nothing_else_moves():
    edit = Edit(
        "chat",
        "weight",
        (Server("10.0.0.11:8000", weight=19), Server("10.0.0.12:8000", weight=19)),
    )
    out = balancer("nginx").apply(NGINX, edit)
    assert out == NGINX.replace("max_fails=2;", "max_fails=2 weight=19;").replace(
        "weight=7 down", "weight=19 down"
    )
    servers = balancer("nginx").read_membership(out).servers
    assert [s.weight for s in servers] == [19, 19]
    # A canary's first step: the old servers weighed, the new one added with its weight.
    canary = (Server("10.0.0.11:8000", weight=19), Server("10.0.0.13:8000", weight=1))
    added = balancer("nginx").apply(out, Edit("chat", "weight", canary))
    assert "    server 10.0.0.13:8000 weight=1;\n    keepalive 16;" in added


def test_haproxy_weights_are_set_or_replaced_and_nothing_else_moves():
    edit = Edit(
        "chat",
        "weight",
        (Server("10.0.0.11:8000", name="gpu-1", weight=3), Server("10.0.0.12:8000", weight=1)),
    )
    out = balancer("haproxy").apply(HAPROXY, edit)
    assert out == HAPROXY.replace("check  # blue", "check weight 3  # blue").replace(
        "weight 7 inter", "weight 1 inter"
    )
    added = balancer("haproxy").apply(
        out, Edit("chat", "add", (Server("10.0.0.13:8000", name="gpu-3", weight=1),))
    )
    assert added.endswith("    server gpu-3 10.0.0.13:8000 check weight 1\n")


@pytest.mark.parametrize(("kind", "weight"), [("nginx", 0), ("haproxy", 257)])
def test_a_weight_the_balancer_refuses_is_refused_before_writing(kind: str, weight: int):
    text = NGINX if kind == "nginx" else HAPROXY
    with pytest.raises(MembershipError, match="weights are"):
        balancer(kind).apply(
            text, Edit("chat", "weight", (Server("10.0.0.11:8000", weight=weight),))
        )


def test_the_plan_shows_each_weight():
    edit = Edit("chat", "weight", (Server("10.0.0.11:8000", name="gpu-1", weight=19),))
    assert edit.shown("upstream") == "set (adding where missing) weights in upstream chat: gpu-1 19"


SHARED_NGINX = """\
upstream chat {
    server 10.0.0.11:8000 weight=3;
    server 10.0.0.12:8000;              # weight 1, nginx's default
    server 10.0.0.13:8000 weight=4 down;
    server 10.0.0.14:8000 weight=9 backup;
}
"""
SHARED_HAPROXY = """\
backend chat
    default-server weight 2
    server gpu-1 10.0.0.11:8000 check weight 6
    server gpu-2 10.0.0.12:8000 check
    server gpu-3 10.0.0.13:8000 check weight 4 disabled
    server gpu-4 10.0.0.14:8000 check backup
    server gpu-5 10.0.0.15:8000 check weight 0
"""


@pytest.mark.parametrize(
    ("kind", "text", "first", "second"),
    [("nginx", SHARED_NGINX, 3 / 4, 1 / 4), ("haproxy", SHARED_HAPROXY, 6 / 8, 2 / 8)],
)
def test_a_pools_share_is_its_weight_among_the_servers_taking_requests(
    kind: str, text: str, first: float, second: float
):
    membership = balancer(kind).read_membership(text, "chat")
    assert membership.share({"10.0.0.11:8000"}) == first
    assert membership.share({"10.0.0.12:8000"}) == second  # the default weight
    # Down, a backup, weight 0: listed, and sent nothing while the others serve.
    assert membership.share({"10.0.0.13:8000", "10.0.0.14:8000", "10.0.0.15:8000"}) == 0
    assert membership.share({"10.0.0.11:8000", "10.0.0.12:8000"}) == 1
    assert [s.backup for s in membership.servers][3] is True
