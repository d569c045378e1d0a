"""Each balancer writes and reads its membership file, and names the commands that apply it.

What a runbook (and the next one reading the live file before it changes it) relies on:
`read_membership(render(m)) == m`, real files as operators write them read right, and the
exact lines sent to the balancer's node.
"""

from __future__ import annotations

from typing import get_args

import pytest

from reliability import balancers
from reliability.balancers import HAProxy, Membership, MembershipError, Nginx, Server
from reliability.config import LoadBalancerConfig, NodeConfig, ServiceConfig
from reliability.runbooks import ops


def lb(kind: str, **extra: str) -> LoadBalancerConfig:
    return LoadBalancerConfig(
        kind=kind, node="lb-1", upstream_file="/etc/lb/chat.conf", url="http://10.0.0.2/", **extra
    )


def nginx(**extra: str) -> Nginx:
    balancer = balancers.for_config(lb("nginx", **extra))
    assert isinstance(balancer, Nginx)
    return balancer


def haproxy(**extra: str) -> HAProxy:
    balancer = balancers.for_config(lb("haproxy", **extra))
    assert isinstance(balancer, HAProxy)
    return balancer


MIXED = Membership.of(
    "chat",
    [
        Server("10.0.0.11:8000", name="gpu-1"),
        Server("10.0.0.12:8000", down=True, name="gpu-2"),
        Server("[fd00::13]:8000", name="gpu-3"),
    ],
)


def unnamed(m: Membership) -> Membership:
    return Membership.of(m.backend, [Server(s.address, s.down) for s in m.servers])


# --- the registry ------------------------------------------------------------------------


def test_every_kind_the_config_accepts_has_a_balancer():
    kinds = get_args(LoadBalancerConfig.model_fields["kind"].annotation)
    assert set(balancers.by_kind) == set(kinds)
    for kind, cls in balancers.by_kind.items():
        assert cls.kind == kind
        assert type(balancers.for_config(lb(kind))) is cls


def test_a_balancer_refuses_a_config_of_another_kind():
    with pytest.raises(ValueError, match="cannot drive a haproxy"):
        Nginx(lb("haproxy"))


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "membership",
    [
        MIXED,
        Membership.of("chat", []),
        Membership.of("a.b-c_d", [Server("127.0.1.1:8000", True, "n1")]),
    ],
)
def test_haproxy_reads_back_what_it_writes(membership):
    assert haproxy().read_membership(haproxy().render(membership)) == membership


@pytest.mark.parametrize(
    "membership", [unnamed(MIXED), Membership.of("chat", []), Membership.of("x", [Server("a:1")])]
)
def test_nginx_reads_back_what_it_writes(membership):
    assert nginx().read_membership(nginx().render(membership)) == membership


def test_nginx_servers_have_no_names_so_reading_back_drops_them():
    assert nginx().read_membership(nginx().render(MIXED)) == unnamed(MIXED)


def test_render_writes_the_files_the_runbooks_always_wrote():
    assert nginx().render(MIXED) == (
        "# Written by reliability's runbooks; edit the runbook, not this file.\n"
        "upstream chat {\n"
        "    server 10.0.0.11:8000;\n"
        "    server 10.0.0.12:8000 down;\n"
        "    server [fd00::13]:8000;\n"
        "}\n"
    )
    assert haproxy().render(MIXED) == (
        "# Written by reliability's runbooks; edit the runbook, not this file.\n"
        "backend chat\n"
        "    server gpu-1 10.0.0.11:8000 check\n"
        "    server gpu-2 10.0.0.12:8000 check disabled\n"
        "    server gpu-3 [fd00::13]:8000 check\n"
    )


def test_haproxy_needs_a_server_name():
    with pytest.raises(ValueError, match="a name is needed"):
        haproxy().render(unnamed(MIXED))


def test_ops_upstream_text_names_servers_after_their_nodes():
    nodes = [
        (NodeConfig(name="gpu-1", address="10.0.0.11", pool="blue"), True),
        (NodeConfig(name="gpu-2", address="10.0.0.12", pool="blue"), False),
    ]
    service = ServiceConfig(name="chat", pools=["blue"], active_pool="blue")
    expected = Membership.of(
        "chat",
        [Server("10.0.0.11:8000", name="gpu-1"), Server("10.0.0.12:8000", True, "gpu-2")],
    )

    text = ops.upstream_text(lb("haproxy"), service, nodes)

    assert haproxy().read_membership(text) == expected
    assert nginx().read_membership(ops.upstream_text(lb("nginx"), service, nodes)) == unnamed(
        expected
    )


# --- live files as operators write them ---------------------------------------------------


def test_nginx_reads_a_hand_written_upstream():
    text = """\
# chat: managed by hand until the runbooks took over
upstream chat {
    zone chat 64k;            # shared memory for the members' state
    least_conn;
    server 10.0.0.11:8000 weight=2 max_fails=3 fail_timeout=10s;
    server 10.0.0.12:8000 down;   # taken out for the driver upgrade
    server [fd00::13]:8000
        max_fails=3 down;
    server "10.0.0.14:8000" backup;
    keepalive 16;
}
"""
    assert nginx().read_membership(text) == Membership.of(
        "chat",
        [
            Server("10.0.0.11:8000"),
            Server("10.0.0.12:8000", down=True),
            Server("[fd00::13]:8000", down=True),
            Server("10.0.0.14:8000"),
        ],
    )


def test_haproxy_reads_a_hand_written_backend():
    text = """\
# chat backend, loaded with -f after haproxy.cfg
backend chat
    balance leastconn
    option httpchk GET /health
    default-server inter 2s fall 3 rise 2
    server gpu-1 10.0.0.11:8000 check weight 2
    server gpu-2 10.0.0.12:8000 check disabled   # driver upgrade
  server gpu-3 10.0.0.13:8000 check  # odd indent is fine
"""
    assert haproxy().read_membership(text) == Membership.of(
        "chat",
        [
            Server("10.0.0.11:8000", name="gpu-1"),
            Server("10.0.0.12:8000", down=True, name="gpu-2"),
            Server("10.0.0.13:8000", name="gpu-3"),
        ],
    )


def test_haproxy_default_server_disabled_marks_all_but_the_enabled_down():
    text = (
        "backend chat\n  default-server disabled\n"
        "  server a 1.2.3.4:80\n  server b 1.2.3.5:80 enabled\n"
    )
    assert [s.down for s in haproxy().read_membership(text).servers] == [True, False]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "found: nothing"),
        ("upstream chat {\n  server a:1;\n}\nupstream two {\n  server b:1;\n}\n", "found: "),
        ("upstream chat {\n  server a:1\n}\n", "unexpected `}`"),
        ("upstream chat {\n  server a:1;\n", "unexpected end of file"),
        ("upstream chat {\n  server;\n}\n", "line 2: `server` without an address"),
        ("upstream a b {\n}\n", "line 1: `upstream` takes one name"),
        ("upstream chat {\n  if ($x) { }\n}\n", "line 2: a block inside the upstream"),
    ],
)
def test_nginx_refuses_what_is_not_one_upstream(text, error):
    with pytest.raises(MembershipError, match=error.replace("(", r"\(").replace("$", r"\$")):
        nginx().read_membership(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("# nothing here\n", "no `backend NAME` section"),
        ("server a 1.2.3.4:80\n", "line 1: `server` outside a backend section"),
        ("backend a\nbackend b\n", "line 2: `backend b`: the file must hold one"),
        ("backend a\nfrontend f\n", "line 2: `frontend f`"),
        ("backend a\n  server a\n", "line 2: `server` takes a name and an address"),
    ],
)
def test_haproxy_refuses_what_is_not_one_backend(text, error):
    with pytest.raises(MembershipError, match=error):
        haproxy().read_membership(text)


def test_membership_views():
    assert [s.name for s in MIXED.serving()] == ["gpu-1", "gpu-3"]
    assert [s.name for s in MIXED.taken_out()] == ["gpu-2"]


# --- commands ------------------------------------------------------------------------------


def test_nginx_commands():
    assert nginx().validate_command() == "nginx -t"
    assert nginx().reload_command() == "nginx -s reload"
    with_conf = nginx(config_file="/srv/lb/nginx.conf")
    assert with_conf.validate_command() == "nginx -t -c /srv/lb/nginx.conf"
    assert with_conf.reload_command() == "nginx -c /srv/lb/nginx.conf -s reload"


def test_haproxy_commands_default_to_debians_paths():
    assert haproxy().validate_command() == (
        "haproxy -c -f /etc/haproxy/haproxy.cfg -f /etc/lb/chat.conf"
    )
    assert haproxy().reload_command() == 'kill -USR2 "$(cat /run/haproxy.pid)"'
    mine = haproxy(config_file="/srv/lb/main.cfg", pid_file="/srv/lb/haproxy.pid")
    assert mine.validate_command() == "haproxy -c -f /srv/lb/main.cfg -f /etc/lb/chat.conf"
    assert mine.reload_command() == 'kill -USR2 "$(cat /srv/lb/haproxy.pid)"'


def test_the_plan_sends_the_balancers_commands():
    config = lb("haproxy", pid_file="/srv/lb/haproxy.pid")
    sent = ops.lb_write_ops("lb-1", config, "text", saves="k", verify=5.0)

    assert [op.detail for op in sent[:-1]] == [
        "cat /etc/lb/chat.conf",
        "cat > /etc/lb/chat.conf.reliability-new && "
        "mv -f /etc/lb/chat.conf.reliability-new /etc/lb/chat.conf",
        "haproxy -c -f /etc/haproxy/haproxy.cfg -f /etc/lb/chat.conf",
        'kill -USR2 "$(cat /srv/lb/haproxy.pid)"',
    ]
    assert [op.changes for op in sent[:-1]] == [False, True, False, True]
    check = sent[-1].check
    assert isinstance(check, ops.HttpWait)
    assert (check.url, check.settle) == ("http://10.0.0.2/", HAProxy.settle)


def test_pid_file_belongs_to_haproxy_only():
    with pytest.raises(ValueError, match="pid_file is for haproxy"):
        lb("nginx", pid_file="/run/nginx.pid")
    with pytest.raises(ValueError, match="must be two files"):
        lb("haproxy", config_file="/etc/lb/chat.conf")
