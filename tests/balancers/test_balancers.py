"""Each balancer reads an operator's membership file and edits it in place, and names the
commands that apply it.

What a runbook (and the next one reading the live file before it changes it) relies on:
an edit changes only the server lines it names, every other byte stays (weights, failure
limits, `backup`, comments, `zone`, keepalive, other blocks, blank lines); the inverse edit
gives the file back byte for byte; what the edit cannot reconcile with the file is refused
with the line and the reason; and the exact lines sent to the balancer's node.
"""

from __future__ import annotations

import difflib
from typing import get_args

import pytest

from reliability import balancers
from reliability.balancers import Edit, HAProxy, Membership, MembershipError, Nginx, Server
from reliability.config import LoadBalancerConfig, ServiceConfig
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


# --- live files as operators keep them ---------------------------------------------------

NGINX_FILE = """\
# chat: kept by hand; the runbooks change server lines only
map $http_x_tenant $tenant_pool {
    default chat;
}

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

upstream embeddings {
    server 10.0.0.11:9000 weight=5;
    keepalive 4;
}
"""

HAPROXY_FILE = """\
# chat backend, loaded with -f after haproxy.cfg
backend chat
    balance leastconn
    option httpchk GET /health
    default-server inter 2s fall 3 rise 2
    server gpu-1 10.0.0.11:8000 check weight 2
    server gpu-2 10.0.0.12:8000 check disabled   # driver upgrade
  server gpu-3 10.0.0.13:8000 check  # odd indent is fine
    http-reuse safe

# another service: never ours
backend embeddings
    server gpu-1 10.0.0.11:9000 check
"""


def test_nginx_reads_each_upstream_of_an_operators_file():
    assert nginx().read_membership(NGINX_FILE, "chat") == Membership.of(
        "chat",
        [
            Server("10.0.0.11:8000"),
            Server("10.0.0.12:8000", down=True),
            Server("[fd00::13]:8000", down=True),
            Server("10.0.0.14:8000"),
        ],
    )
    assert nginx().read_membership(NGINX_FILE, "embeddings") == Membership.of(
        "embeddings", [Server("10.0.0.11:9000")]
    )


def test_haproxy_reads_each_backend_of_an_operators_file():
    assert haproxy().read_membership(HAPROXY_FILE, "chat") == Membership.of(
        "chat",
        [
            Server("10.0.0.11:8000", name="gpu-1"),
            Server("10.0.0.12:8000", down=True, name="gpu-2"),
            Server("10.0.0.13:8000", name="gpu-3"),
        ],
    )
    assert haproxy().read_membership(HAPROXY_FILE, "embeddings").servers == (
        Server("10.0.0.11:9000", name="gpu-1"),
    )


def test_without_a_name_the_file_must_hold_one_block():
    one = "upstream chat {\n    server 10.0.0.11:8000;\n}\n"
    assert nginx().read_membership(one).backend == "chat"
    with pytest.raises(
        MembershipError, match=r"expected one upstream block, found: chat \(line 6\)"
    ):
        nginx().read_membership(NGINX_FILE)


def test_haproxy_default_server_disabled_marks_all_but_the_enabled_down():
    text = (
        "backend chat\n  default-server disabled\n"
        "  server a 1.2.3.4:80\n  server b 1.2.3.5:80 enabled\n"
    )
    assert [s.down for s in haproxy().read_membership(text).servers] == [True, False]


# --- edits ----------------------------------------------------------------------------------


def changed_lines(before: str, after: str) -> list[str]:
    """The lines an edit removed (-) and added (+), in order."""
    diff = difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True))
    return [line for line in diff if line[:1] in "+-"]


def edit(action: str, *servers: Server, backend: str = "chat") -> Edit:
    return Edit(backend, action, servers)  # type: ignore[arg-type]


GPU1 = Server("10.0.0.11:8000", name="gpu-1")
SPARE = Server("10.0.0.19:8000", name="spare-1")


@pytest.mark.parametrize(
    ("change", "lines", "inverse"),
    [
        (
            edit("down", GPU1),
            [
                "-     server 10.0.0.11:8000 weight=2 max_fails=3 fail_timeout=10s;\n",
                "+     server 10.0.0.11:8000 weight=2 max_fails=3 fail_timeout=10s down;\n",
            ],
            edit("up", GPU1),
        ),
        (
            edit("up", Server("10.0.0.12:8000")),
            [
                "-     server 10.0.0.12:8000 down;   # taken out for the driver upgrade\n",
                "+     server 10.0.0.12:8000;   # taken out for the driver upgrade\n",
            ],
            edit("down", Server("10.0.0.12:8000")),
        ),
        (
            edit("up", Server("[fd00::13]:8000")),
            ["-         max_fails=3 down;\n", "+         max_fails=3;\n"],
            edit("down", Server("[fd00::13]:8000")),
        ),
        (
            edit("add", SPARE),
            ["+     server 10.0.0.19:8000;\n"],
            edit("remove", SPARE),
        ),
    ],
    ids=["down", "up", "up-multiline", "add"],
)
def test_an_nginx_edit_changes_only_the_lines_it_names_and_its_inverse_gives_the_file_back(
    change, lines, inverse
):
    after = nginx().apply(NGINX_FILE, change)

    assert changed_lines(NGINX_FILE, after) == lines
    assert nginx().apply(after, inverse) == NGINX_FILE
    # The other upstream, the map, zone, least_conn, keepalive and comments: all still there.
    assert nginx().read_membership(after, "embeddings") == nginx().read_membership(
        NGINX_FILE, "embeddings"
    )


def test_an_nginx_server_is_added_after_the_last_server_line_with_its_indentation():
    after = nginx().apply(NGINX_FILE, edit("add", SPARE))
    block = after.split("upstream chat {\n", 1)[1].split("}", 1)[0]
    assert block.splitlines()[-4:] == [
        '    server "10.0.0.14:8000" backup;',
        "    server 10.0.0.19:8000;",
        "",
        "    keepalive 16;",
    ]


def test_an_nginx_pool_switch_keeps_the_lines_it_keeps_and_puts_them_up():
    after = nginx().apply(
        NGINX_FILE, edit("switch", Server("10.0.0.12:8000"), Server("10.0.0.20:8000"))
    )

    assert changed_lines(NGINX_FILE, after) == [
        "-     server 10.0.0.11:8000 weight=2 max_fails=3 fail_timeout=10s;\n",
        "-     server 10.0.0.12:8000 down;   # taken out for the driver upgrade\n",
        "+     server 10.0.0.12:8000;   # taken out for the driver upgrade\n",
        "-     server [fd00::13]:8000\n",
        "-         max_fails=3 down;\n",
        '-     server "10.0.0.14:8000" backup;\n',
        "+     server 10.0.0.20:8000;\n",
    ]
    assert nginx().read_membership(after, "chat").servers == (
        Server("10.0.0.12:8000"),
        Server("10.0.0.20:8000"),
    )


def test_an_edit_of_another_block_leaves_the_services_alone():
    after = nginx().apply(NGINX_FILE, edit("down", Server("10.0.0.11:9000"), backend="embeddings"))
    assert changed_lines(NGINX_FILE, after) == [
        "-     server 10.0.0.11:9000 weight=5;\n",
        "+     server 10.0.0.11:9000 weight=5 down;\n",
    ]


def test_nginx_servers_on_one_line_are_edited_in_place():
    text = "upstream chat { server a:1 weight=3; server b:1; }  # one line\n"
    down = nginx().apply(text, edit("down", Server("a:1")))
    added = nginx().apply(text, edit("add", Server("c:1")))

    assert down == "upstream chat { server a:1 weight=3 down; server b:1; }  # one line\n"
    assert nginx().read_membership(added).servers == (Server("a:1"), Server("b:1"), Server("c:1"))
    assert added == (
        "upstream chat { server a:1 weight=3; server b:1;\n    server c:1;\n }  # one line\n"
    )
    assert nginx().apply(text, edit("remove", Server("a:1"))) == (
        "upstream chat {  server b:1; }  # one line\n"
    )


@pytest.mark.parametrize(
    ("change", "lines", "inverse"),
    [
        (
            edit("down", GPU1),
            [
                "-     server gpu-1 10.0.0.11:8000 check weight 2\n",
                "+     server gpu-1 10.0.0.11:8000 check weight 2 disabled\n",
            ],
            edit("up", GPU1),
        ),
        (
            edit("up", Server("10.0.0.12:8000")),
            [
                "-     server gpu-2 10.0.0.12:8000 check disabled   # driver upgrade\n",
                "+     server gpu-2 10.0.0.12:8000 check   # driver upgrade\n",
            ],
            edit("down", Server("10.0.0.12:8000")),
        ),
        (
            edit("add", SPARE),
            ["+   server spare-1 10.0.0.19:8000 check\n"],
            edit("remove", SPARE),
        ),
    ],
    ids=["down", "up", "add"],
)
def test_a_haproxy_edit_changes_only_the_lines_it_names_and_its_inverse_gives_the_file_back(
    change, lines, inverse
):
    after = haproxy().apply(HAPROXY_FILE, change)

    assert changed_lines(HAPROXY_FILE, after) == lines
    assert haproxy().apply(after, inverse) == HAPROXY_FILE


def test_a_haproxy_server_is_added_before_the_sections_other_lines_that_follow_it():
    after = haproxy().apply(HAPROXY_FILE, edit("add", SPARE))
    assert (
        "  server gpu-3 10.0.0.13:8000 check  # odd indent is fine\n"
        "  server spare-1 10.0.0.19:8000 check\n    http-reuse safe\n" in after
    )


def test_haproxy_marks_up_under_a_disabling_default_server_with_enabled():
    text = "backend chat\n  default-server disabled\n  server a 1.2.3.4:80 check\n"
    up = haproxy().apply(text, edit("up", Server("1.2.3.4:80")))
    assert up == "backend chat\n  default-server disabled\n  server a 1.2.3.4:80 check enabled\n"
    assert haproxy().read_membership(up).servers[0].down is False
    assert haproxy().apply(up, edit("down", Server("1.2.3.4:80"))) == text


def test_an_edit_to_what_already_is_changes_nothing():
    assert nginx().apply(NGINX_FILE, edit("down", Server("10.0.0.12:8000"))) == NGINX_FILE
    assert haproxy().apply(HAPROXY_FILE, edit("up", GPU1)) == HAPROXY_FILE


def test_an_added_line_ends_a_file_without_a_final_newline_first():
    text = "backend chat\n    server gpu-1 10.0.0.11:8000 check"
    assert haproxy().apply(text, edit("add", SPARE)) == (
        "backend chat\n    server gpu-1 10.0.0.11:8000 check\n"
        "    server spare-1 10.0.0.19:8000 check\n"
    )


def test_an_empty_upstream_gets_its_first_server_one_level_in():
    text = "  upstream chat {\n  }\n"
    assert nginx().apply(text, edit("add", SPARE)) == (
        "  upstream chat {\n      server 10.0.0.19:8000;\n  }\n"
    )


def test_adding_a_server_listed_down_marks_it_up_on_its_own_line():
    # A node that failed once (its line marked down) is back as a standby and takes over.
    down = nginx().apply(NGINX_FILE, edit("down", GPU1))
    again = nginx().apply(down, edit("add", GPU1))
    assert again == NGINX_FILE  # its weight and failure limits kept, nothing added


@pytest.mark.parametrize(
    ("balancer", "text", "change", "error"),
    [
        (
            nginx,
            NGINX_FILE,
            edit("down", Server("10.0.0.99:8000")),
            "line 6: 10.0.0.99:8000 is not in upstream chat (it lists 10.0.0.11:8000, ",
        ),
        (
            nginx,
            NGINX_FILE,
            edit("add", GPU1),
            "line 9: 10.0.0.11:8000 is already in upstream chat",
        ),
        (
            nginx,
            NGINX_FILE,
            edit("down", GPU1, backend="chat-v2"),
            "no `upstream chat-v2` in /etc/lb/chat.conf (found: chat (line 6), embeddings "
            "(line 18))",
        ),
        (
            nginx,
            "upstream chat {\n  server a:1;\n  server a:1 backup;\n}\n",
            edit("down", Server("a:1")),
            "line 3: a:1 is listed 2 times in upstream chat (lines 2, 3)",
        ),
        (
            haproxy,
            HAPROXY_FILE,
            edit("add", Server("10.0.0.20:8000", name="gpu-1")),
            "line 6: a server named gpu-1 (10.0.0.11:8000) is already in backend chat",
        ),
        (
            haproxy,
            HAPROXY_FILE,
            edit("add", Server("10.0.0.20:8000")),
            "HAProxy server 10.0.0.20:8000: a name is needed, not None",
        ),
        (haproxy, HAPROXY_FILE, edit("remove", SPARE), "line 2: 10.0.0.19:8000 is not in backend"),
    ],
)
def test_an_edit_the_file_disagrees_with_is_refused_with_the_line_and_the_reason(
    balancer, text, change, error
):
    with pytest.raises(MembershipError, match=error.replace("(", r"\(").replace(")", r"\)")):
        balancer().apply(text, change)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("upstream chat {\n  server a:1\n}\n", "line 3: unexpected `}`"),
        ("upstream chat {\n  server a:1;\n", "unexpected end of file"),
        ("upstream chat {\n  server;\n}\n", "line 2: `server` without an address"),
        ("upstream a b {\n}\n", "line 1: `upstream` takes one name"),
        ("upstream chat {\n  if ($x) { }\n}\n", "line 2: a block inside the upstream"),
        ("upstream chat {\n}\nupstream chat {\n}\n", "line 3: a second `upstream chat`"),
    ],
)
def test_nginx_refuses_a_file_it_cannot_read(text, error):
    with pytest.raises(MembershipError, match=error.replace("(", r"\(").replace("$", r"\$")):
        nginx().apply(text, edit("down", GPU1))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("server a 1.2.3.4:80\n", "line 1: `server` outside a section"),
        ("backend a b\n", "line 1: `backend` takes one name"),
        ("backend a\nbackend a\n", "line 2: a second `backend a`"),
        ("backend chat\n  server a\n", "line 2: `server` takes a name and an address"),
    ],
)
def test_haproxy_refuses_a_file_it_cannot_read(text, error):
    with pytest.raises(MembershipError, match=error):
        haproxy().apply(text, edit("down", GPU1))


def test_haproxy_leaves_other_sections_alone():
    text = "frontend f\n  bind :80\n  default_backend chat\nbackend chat\n  server a 1.2.3.4:80\n"
    assert haproxy().apply(text, edit("down", Server("1.2.3.4:80"))) == text.replace(
        "1.2.3.4:80\n", "1.2.3.4:80 disabled\n"
    )


def test_membership_views():
    m = haproxy().read_membership(HAPROXY_FILE, "chat")
    assert [s.name for s in m.serving()] == ["gpu-1", "gpu-3"]
    assert [s.name for s in m.taken_out()] == ["gpu-2"]


def test_edits_as_a_plan_shows_them():
    both = (GPU1, Server("10.0.0.12:8000", name="gpu-2"))
    assert (
        edit("down", GPU1).shown("upstream") == "mark gpu-1 (10.0.0.11:8000) down in upstream chat"
    )
    assert edit("add", SPARE).shown("backend") == (
        "add spare-1 (10.0.0.19:8000) to backend chat, after its last server line"
    )
    assert edit("switch", *both).shown("upstream") == (
        "switch upstream chat to gpu-1 (10.0.0.11:8000), gpu-2 (10.0.0.12:8000); "
        "other server lines removed"
    )


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


def test_the_plan_reads_edits_writes_and_applies_in_that_order():
    config = lb("haproxy", pid_file="/srv/lb/haproxy.pid")
    sent = ops.lb_edit_ops("lb-1", config, edit("down", GPU1), saves="k", verify=5.0)

    assert [(op.where, op.detail) for op in sent[:-1]] == [
        ("lb-1", "cat /etc/lb/chat.conf"),
        (ops.LOCAL, "mark gpu-1 (10.0.0.11:8000) down in backend chat"),
        (
            "lb-1",
            "cat > /etc/lb/chat.conf.reliability-new && "
            "mv -f /etc/lb/chat.conf.reliability-new /etc/lb/chat.conf",
        ),
        ("lb-1", "haproxy -c -f /etc/haproxy/haproxy.cfg -f /etc/lb/chat.conf"),
        ("lb-1", 'kill -USR2 "$(cat /srv/lb/haproxy.pid)"'),
    ]
    assert [op.changes for op in sent[:-1]] == [False, False, True, False, True]
    cat, change, write = sent[:3]
    # The edit works on what the cat saved; the write sends what the edit made.
    assert (cat.saves, change.needs) == ("k", "k")
    assert isinstance(write.stdin, ops.AtRun) and write.stdin.key == change.saves == write.needs
    assert change.edit is not None
    assert change.edit.apply(HAPROXY_FILE) == haproxy().apply(HAPROXY_FILE, edit("down", GPU1))
    check = sent[-1].check
    assert isinstance(check, ops.HttpWait)
    assert (check.url, check.settle) == ("http://10.0.0.2/health", HAProxy.settle)


def test_undo_puts_the_saved_file_back_as_it_was_read():
    restore = ops.lb_restore_ops("lb-1", lb("nginx"), ops.AtRun("saved", "k"))
    assert isinstance(restore[0].stdin, ops.AtRun) and restore[0].stdin.key == "k"
    assert [op.detail for op in restore[1:]] == ["nginx -t", "nginx -s reload"]


# --- health_url -----------------------------------------------------------------------------


def service(health_path: str = "/health", **lb_extra: str) -> ServiceConfig:
    return ServiceConfig(
        name="chat",
        pools=["blue"],
        active_pool="blue",
        container={"health_path": health_path},
        load_balancer=lb("nginx", **lb_extra).model_dump(exclude={"health_url"}, exclude_none=True)
        | lb_extra,
    )


def test_health_url_defaults_to_the_engines_health_path_through_the_balancer():
    assert lb("nginx").health_url == "http://10.0.0.2/health"
    assert service().load_balancer.health_url == "http://10.0.0.2/health"
    assert service("/healthz").load_balancer.health_url == "http://10.0.0.2/healthz"
    assert nginx().health_url == "http://10.0.0.2/health"


@pytest.mark.parametrize("url", ["http://10.0.0.2/health", "http://10.0.0.2/v1/models"])
def test_health_url_may_name_an_engine_path(url):
    assert service(health_url=url).load_balancer.health_url == url


@pytest.mark.parametrize(
    "url", ["http://10.0.0.2/", "http://10.0.0.3/health", "http://10.0.0.2/up"]
)
def test_health_url_elsewhere_is_refused_with_the_fix(url):
    with pytest.raises(ValueError, match=r"load_balancer\.health_url") as refused:
        service(health_url=url)
    assert "write http://10.0.0.2/health (the container's health_path) or" in str(refused.value)


def test_pid_file_belongs_to_haproxy_only():
    with pytest.raises(ValueError, match="pid_file is for haproxy"):
        lb("nginx", pid_file="/run/nginx.pid")
    with pytest.raises(ValueError, match="must be two files"):
        lb("haproxy", config_file="/etc/lb/chat.conf")
