"""`incidents list` and `status` ask the running daemon (its read API) and read the database
themselves when it cannot answer: the same output either way, every filter honoured, a
daemon that is down, of another database, or guarded by a token the command lacks never
in the way, and the read API refusing what it should.

The daemon is the real one (`reliability daemon` in its own process) on the test's
database; the commands run as the CLI runs them.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.testclient import TestClient

from reliability import db, readapi, web
from reliability.cli import main
from reliability.cli_support import from_daemon, load_config
from reliability.incidents import service, silences
from reliability.testing.cluster import HealthyServer, Member, start_member, wait_for
from reliability.testing.loopback import free_port

TOKEN_ENV = "RELIABILITY_TEST_API_TOKEN"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_config(path: Path, database_url: str, port: int, **sections: Any) -> Path:
    http = {"listen": f"127.0.0.1:{port}", **sections.pop("http", {})}
    config = {
        "database": {"url": database_url},
        "http": http,
        "rules": {"builtin": False},
        **sections,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, Member]]]:
    """start_daemon(database_url, **sections) -> (its config, the daemon), once its read
    API answers; every daemon stopped at the end."""
    started: list[Member] = []

    def start(database_url: str, **sections: Any) -> tuple[Path, Member]:
        port = free_port()
        config = write_config(tmp_path / f"daemon-{port}.yaml", database_url, port, **sections)
        member = start_member(config, f"d{port}", port, tmp_path)
        started.append(member)
        loaded = load_config(config)
        wait_for(
            "the daemon's read API",
            lambda: from_daemon(loaded, readapi.STATUS_PATH) is not None,
            60,
            [member],
        )
        return config, member

    yield start
    for member in started:
        member.stop()


def add_incidents(session: Session) -> None:
    """Four incidents seen minutes ago (their ages read the same a few seconds apart): an
    open critical one, an acknowledged one, a silenced one, a resolved one."""
    now = datetime.now(UTC)

    def opened(fingerprint: str, minutes: int, severity: str, **labels: str) -> int:
        upsert = service.open_or_update(
            session,
            fingerprint=fingerprint,
            title=f"{fingerprint} [bold]title[/]",
            severity=severity,
            source="test",
            labels=labels,
            at=now - timedelta(minutes=minutes),
        )
        return upsert.incident.id

    opened("xid-79", 20, "critical", node="gpu-1")
    acked = opened("hot", 30, "warning", node="gpu-2")
    service.acknowledge(session, incident_id=acked, by="alice", at=now - timedelta(minutes=25))
    opened("disk", 40, "warning", node="gpu-3")
    silences.create(
        session,
        matchers=[silences.parse_matcher("node=gpu-3")],
        duration=timedelta(hours=1),
        by="bob",
        now=now,
    )
    done = opened("old", 50, "info", node="gpu-4")
    service.resolve(session, incident_id=done, by="bob", at=now - timedelta(minutes=45))
    session.commit()


LISTS = [
    (),
    ("--status", "all"),
    ("--status", "resolved"),
    ("--status", "acknowledged"),
    ("--status", "open", "--limit", "1"),
]


def test_incidents_list_is_the_same_from_the_daemon_and_from_the_database(
    start_daemon, database_url: str, session: Session
):
    add_incidents(session)
    config, _ = start_daemon(database_url)
    c = str(config)
    shown = {}
    for options in LISTS:
        # The daemon answered (not a second read of the database)...
        params = dict(zip(options[::2], options[1::2], strict=True))
        asked = {k.lstrip("-"): v for k, v in params.items()}
        asked = {"status": "unresolved", "limit": "100"} | asked
        answered = from_daemon(load_config(config), readapi.INCIDENTS_PATH, asked)
        assert answered is not None
        # ...and the command prints the same, as JSON and on the screen.
        document = run("incidents", "list", "--json", *options, "-c", c).output
        assert document == run("incidents", "list", "--json", "--direct", *options, "-c", c).output
        assert json.loads(document) == answered
        screen = run("incidents", "list", *options, "-c", c).output
        assert screen == run("incidents", "list", "--direct", *options, "-c", c).output
        shown[options] = [(i["title"].split()[0], i["silenced_by"]) for i in answered]
    # The filters, as the daemon applied them.
    assert shown[()] == [("xid-79", None), ("hot", None), ("disk", 1)]
    assert shown[("--status", "all")] == [*shown[()], ("old", None)]
    assert shown[("--status", "resolved")] == [("old", None)]
    assert shown[("--status", "acknowledged")] == [("hot", None)]
    assert shown[("--status", "open", "--limit", "1")] == [("xid-79", None)]
    screen = run("incidents", "list", "-c", c).output
    assert "[bold]title[/]" in screen  # a title is text, never markup
    assert "alice" in screen and "silenced" in screen


def _steady(document: dict[str, Any]) -> dict[str, Any]:
    """The status without what moves between two reads a second apart."""
    document = {k: v for k, v in document.items() if k != "at"}
    document["incidents"] = [
        {k: v for k, v in i.items() if k != "age_seconds"} for i in document["incidents"]
    ]
    return document


def test_status_is_the_same_from_the_daemon_and_from_the_database(
    start_daemon, tmp_path: Path, session: Session, database_url: str, backend: str
):
    if backend != "sqlite":
        pytest.skip("the two-daemon test covers PostgreSQL")
    add_incidents(session)
    with HealthyServer() as healthy:
        endpoints = [
            {"name": "pool-blue", "url": healthy.url, "kind": "http", "interval": "1h"},
            {"name": "gone", "url": f"http://127.0.0.1:{free_port()}", "kind": "http"},
        ]
        for e in endpoints:
            e |= {"interval": "1h", "timeout": "2s"}
        config, daemon = start_daemon(database_url, endpoints=endpoints)
        c = str(config)
        loaded = load_config(config)

        def probed() -> bool:
            document = from_daemon(loaded, readapi.STATUS_PATH)
            return all(e["last_probe_ok"] is not None for e in document["endpoints"])

        # Probed once an hour: nothing the daemon reports moves during the test.
        wait_for("both endpoints probed", probed, 60, [daemon])
        answered = from_daemon(loaded, readapi.STATUS_PATH)
        result = run("status", "--json", "-c", c)
        direct = run("status", "--json", "--direct", "-c", c)
        screen = run("status", "-c", c)
        screen_direct = run("status", "--direct", "-c", c)
    assert (result.exit_code, direct.exit_code, screen.exit_code) == (1, 1, 1)
    assert _steady(json.loads(result.output)) == _steady(answered)
    assert _steady(json.loads(result.output)) == _steady(json.loads(direct.output))
    endpoints_read = {e["name"]: e["last_probe_ok"] for e in answered["endpoints"]}
    assert endpoints_read == {"pool-blue": True, "gone": False}
    assert answered["daemons"] == [
        {"member": None, "url": f"{daemon.url}/metrics", "up": True, "error": None}
    ]

    def without_clock(text: str) -> str:
        return re.sub(r"\d\d:\d\d:\d\dZ", "HH:MM:SSZ", text, count=1)

    assert without_clock(screen.output) == without_clock(screen_direct.output)
    assert "critical incident #1 open: xid-79 [bold]title[/]" in screen.output


def test_with_no_daemon_the_commands_read_the_database_at_once(
    tmp_path: Path, database_url: str, session: Session
):
    add_incidents(session)
    port = free_port()
    config = write_config(tmp_path / "reliability.yaml", database_url, port)
    assert from_daemon(load_config(config), readapi.INCIDENTS_PATH) is None
    listed = json.loads(run("incidents", "list", "--json", "-c", str(config)).output)
    assert [i["title"].split()[0] for i in listed] == ["xid-79", "hot", "disk"]
    document = json.loads(run("status", "--json", "-c", str(config)).output)
    url = f"http://127.0.0.1:{port}/metrics"
    assert document["daemon"] == {"url": url, "up": False, "error": "connection refused"}
    assert [i["title"].split()[0] for i in document["incidents"]] == ["xid-79", "disk", "hot"]


def test_a_refused_connection_fails_at_once_and_a_silent_host_after_the_connect_timeout():
    with pytest.raises(readapi.DaemonUnreachable, match=r"^connection refused$"):
        readapi.get(f"http://127.0.0.1:{free_port()}/api/v1/status", timeout=30)
    # A listener whose queue is full drops the handshake, as a host behind a firewall does:
    # the short connect timeout ends the wait, not the answer's 30 s.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for s in queued:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        try:
            with pytest.raises(readapi.DaemonUnreachable, match=r"^no connection within 0\.5s$"):
                readapi.get(f"http://127.0.0.1:{port}/", timeout=30, connect_timeout=0.5)
        finally:
            for s in queued:
                s.close()
    # Connected, never answered: the answer's own deadline.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        url = f"http://127.0.0.1:{mute.getsockname()[1]}/"
        with pytest.raises(readapi.DaemonUnreachable, match=r"^no answer within 0\.5s$"):
            readapi.get(url, timeout=0.5)


def test_a_daemon_of_another_database_is_not_read(
    start_daemon, tmp_path: Path, database_url: str, session: Session, backend: str
):
    """Two configs on one machine, the same default port: the command reads its own
    database, never the other daemon's."""
    if backend != "sqlite":
        pytest.skip("one backend is enough: the check compares URLs")
    add_incidents(session)
    theirs, daemon = start_daemon(database_url)
    mine_db = f"sqlite:///{tmp_path / 'mine.db'}"
    db.upgrade(mine_db)
    mine = write_config(tmp_path / "mine.yaml", mine_db, daemon.port)
    assert from_daemon(load_config(theirs), readapi.INCIDENTS_PATH) is not None
    assert from_daemon(load_config(mine), readapi.INCIDENTS_PATH) is None
    assert run("incidents", "list", "--json", "-c", str(mine)).output.strip() == "[]"
    assert "this daemon serves another database" in daemon.output()


def test_with_a_token_only_a_command_that_has_it_is_answered(
    start_daemon, database_url: str, session: Session, backend: str, monkeypatch
):
    if backend != "sqlite":
        pytest.skip("one backend is enough")
    add_incidents(session)
    monkeypatch.setenv(TOKEN_ENV, "s3cret-read-token")
    config, daemon = start_daemon(database_url, http={"api_token_env": TOKEN_ENV})
    assert daemon.get(readapi.INCIDENTS_PATH).status_code == 401
    assert from_daemon(load_config(config), readapi.INCIDENTS_PATH) is not None
    monkeypatch.delenv(TOKEN_ENV)
    # Without it the command cannot ask, and reads the database instead.
    with pytest.raises(Exception, match=TOKEN_ENV):
        load_config(config).api_token()
    listed = json.loads(run("incidents", "list", "--json", "-c", str(config)).output)
    assert len(listed) == 3
    assert "s3cret-read-token" not in daemon.output()


def _api(listen: str, token: str | None = None, fail: Exception | None = None) -> TestClient:
    from pydantic import SecretStr

    def incidents(status: str, limit: int) -> list[dict[str, Any]]:
        if fail is not None:
            raise fail
        if status not in ("unresolved", "all"):
            raise ValueError(f"status must be one of ..., not {status!r}")
        return [{"status": status, "limit": limit}]

    routes = web.read_routes(
        incidents=incidents,
        status=lambda: {"ok": True, "nan": float("nan")},
        database_url="sqlite:////var/lib/reliability/reliability.db",
        listen=listen,
        token=SecretStr(token) if token else None,
    )
    return TestClient(Starlette(routes=routes))


def test_the_read_api_refuses_what_it_should():
    api = _api("127.0.0.1:9464")
    assert api.get(readapi.INCIDENTS_PATH).json() == [{"status": "unresolved", "limit": 100}]
    assert api.get(readapi.INCIDENTS_PATH, params={"status": "all", "limit": "3"}).json() == [
        {"status": "all", "limit": 3}
    ]
    assert api.get(readapi.INCIDENTS_PATH, params={"limit": "lots"}).status_code == 400
    assert api.get(readapi.INCIDENTS_PATH, params={"status": "zz"}).status_code == 400
    # The status as `--json` prints it, a NaN ratio included.
    assert api.get(readapi.STATUS_PATH).text == '{"ok": true, "nan": NaN}'
    other = {readapi.DATABASE_HEADER: readapi.database_key("sqlite:////elsewhere.db")}
    assert api.get(readapi.STATUS_PATH, headers=other).status_code == 409
    same = {
        readapi.DATABASE_HEADER: readapi.database_key(
            "sqlite:////var/lib/reliability/reliability.db"
        )
    }
    assert api.get(readapi.STATUS_PATH, headers=same).status_code == 200

    # Bound beyond loopback without a token: whoever reaches the port would read it.
    wide = _api("0.0.0.0:9464")
    refused = wide.get(readapi.STATUS_PATH)
    assert refused.status_code == 403
    assert "http.api_token_env" in refused.json()["error"]

    guarded = _api("0.0.0.0:9464", token="t0ken")
    assert guarded.get(readapi.STATUS_PATH).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert guarded.get(readapi.STATUS_PATH, headers=wrong).status_code == 401
    right = {"Authorization": "Bearer t0ken"}
    assert guarded.get(readapi.STATUS_PATH, headers=right).status_code == 200

    down = _api("127.0.0.1:9464", fail=db.DatabaseUnavailable("sqlite:///x.db", "disk I/O error"))
    failed = down.get(readapi.INCIDENTS_PATH)
    assert failed.status_code == 503
    assert failed.json()["error"].startswith("database: ")


def test_the_database_key_names_no_password():
    with_password = "postgresql+psycopg://app:hunter2@db.example:5432/reliability"
    other_password = "postgresql+psycopg://app:other@db.example:5432/reliability"
    assert readapi.database_key(with_password) == readapi.database_key(other_password)
    assert readapi.database_key(with_password) != readapi.database_key(
        "postgresql+psycopg://app:hunter2@db.example:5432/staging"
    )
