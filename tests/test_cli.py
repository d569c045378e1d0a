"""The `reliability` command as an operator uses it: exit codes, messages, round trips.

Database commands run on both backends (the `database_url` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reliability import db
from reliability.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "reliability.example.yaml"
GROUPS = ("config", "dashboards", "db", "daemon", "demo", "incidents", "rules", "runbook", "status")


def write_config(directory: Path, database_url: str) -> Path:
    path = directory / "reliability.yaml"
    path.write_text(f"database:\n  url: {database_url}\n")
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def config_file(tmp_path: Path, database_url: str, engine) -> Path:
    """A config on the migrated database of this backend, emptied for the test."""
    return write_config(tmp_path, database_url)


def test_help_lists_the_command_groups():
    result = run("--help")
    assert result.exit_code == 0
    for group in GROUPS:
        assert f"  {group}" in result.output


def test_incident_round_trip_open_ack_resolve(config_file: Path):
    c = str(config_file)
    opened = run(
        "incidents",
        "open",
        "gpu-2 fell off the bus",
        "--severity",
        "critical",
        "--label",
        "node=gpu-2",
        "-c",
        c,
        "--json",
    )
    assert opened.exit_code == 0, opened.output
    incident = json.loads(opened.output)["incident"]
    number = str(incident["id"])
    assert incident["status"] == "open"

    listed = run("incidents", "list", "-c", c)
    assert listed.exit_code == 0
    assert "gpu-2 fell off the bus" in listed.output
    assert "node=gpu-2" in listed.output

    acked = run("incidents", "ack", number, "--by", "alice", "-c", c, "--json")
    assert acked.exit_code == 0, acked.output
    assert json.loads(acked.output)["acknowledged_by"] == "alice"

    resolved = run("incidents", "resolve", number, "--by", "bob", "--note", "reseated", "-c", c)
    assert resolved.exit_code == 0, resolved.output
    assert "resolved" in resolved.output

    assert "No unresolved incidents" in run("incidents", "list", "-c", c).output
    done = json.loads(run("incidents", "list", "--status", "resolved", "--json", "-c", c).output)
    assert [(i["id"], i["resolved_by"]) for i in done] == [(incident["id"], "bob")]

    shown = json.loads(run("incidents", "show", number, "--json", "-c", c).output)
    kinds = [(e["kind"], e["actor"]) for e in shown["events"]]
    assert [k for k, _ in kinds] == ["opened", "acknowledged", "resolved"]
    assert ("acknowledged", "alice") in kinds
    assert any(e["message"] and "reseated" in e["message"] for e in shown["events"])


def test_the_same_signal_twice_is_one_incident(config_file: Path):
    c = str(config_file)
    first = json.loads(run("incidents", "open", "hosted API 503", "-c", c, "--json").output)
    second = json.loads(run("incidents", "open", "hosted API 503", "-c", c, "--json").output)
    assert (first["action"], second["action"]) == ("opened", "refired")
    assert second["incident"]["id"] == first["incident"]["id"]
    assert second["incident"]["occurrences"] == 2


def test_unknown_incident_fails_with_exit_1(config_file: Path):
    result = run("incidents", "ack", "4242", "-c", str(config_file))
    assert result.exit_code == 1
    assert "4242" in result.output


def test_resolving_twice_is_refused(config_file: Path):
    c = str(config_file)
    number = str(
        json.loads(run("incidents", "open", "x", "-c", c, "--json").output)["incident"]["id"]
    )
    assert run("incidents", "resolve", number, "-c", c).exit_code == 0
    again = run("incidents", "resolve", number, "-c", c)
    assert again.exit_code == 1
    assert "resolved" in again.output


def test_a_database_without_schema_says_to_upgrade_and_upgrade_fixes_it(
    tmp_path: Path, empty_database_url: str
):
    c = str(write_config(tmp_path, empty_database_url))
    before = run("incidents", "list", "-c", c)
    assert before.exit_code == 2
    assert "reliability db upgrade" in before.output
    assert "Traceback" not in before.output

    upgraded = run("db", "upgrade", "-c", c)
    assert upgraded.exit_code == 0, upgraded.output
    assert db.head_revision() in upgraded.output
    assert run("incidents", "list", "-c", c).exit_code == 0
    assert "already at schema" in run("db", "upgrade", "-c", c).output


def test_an_unreachable_database_names_the_url_without_its_password(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TEST_DB_URL", "postgresql+psycopg://ops:s3cret-pw@127.0.0.1:1/incidents")
    path = tmp_path / "reliability.yaml"
    path.write_text("database:\n  url_env: TEST_DB_URL\n")
    result = run("incidents", "list", "-c", str(path))
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.output
    assert "s3cret-pw" not in result.output
    assert "Traceback" not in result.output


def test_config_check_passes_on_the_example():
    result = run("config", "check", "--skip-secrets", "-c", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_a_broken_config_writes_nothing_to_the_database(tmp_path: Path, database_url: str, engine):
    path = tmp_path / "reliability.yaml"
    path.write_text(f"database:\n  url: {database_url}\nincidents:\n  reopen_window: soon\n")
    result = run("incidents", "open", "never stored", "-c", str(path))
    assert result.exit_code == 2
    assert f"{path}:4: incidents.reopen_window" in result.output
    (tmp_path / "good").mkdir()
    good = write_config(tmp_path / "good", database_url)
    assert "No unresolved incidents" in run("incidents", "list", "-c", str(good)).output


def test_silence_round_trip_create_list_expire(config_file: Path):
    c = str(config_file)
    opened = run("incidents", "open", "gpu-3 hot", "--label", "node=gpu-3", "-c", c, "--json")
    incident = json.loads(opened.output)["incident"]["id"]
    run("incidents", "open", "gpu-1 hot", "--label", "node=gpu-1", "-c", c)

    created = run(
        "incidents", "silence", "--match", "node=~gpu-[3]", "--for", "2h",
        "--comment", "reseating gpu-3", "--by", "alice", "-c", c, "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    silence = json.loads(created.output)
    number = str(silence["id"])
    assert silence["state"] == "active" and silence["created_by"] == "alice"
    assert silence["unresolved_incidents_matched"] == 1

    listed = run("incidents", "list", "-c", c)
    assert f"silenced #{number}" in listed.output
    rows = json.loads(run("incidents", "list", "-c", c, "--json").output)
    assert {i["id"]: i["silenced_by"] for i in rows}[incident] == silence["id"]
    assert sorted(i["silenced_by"] is None for i in rows) == [False, True]

    active = run("incidents", "silences", "list", "-c", c)
    assert active.exit_code == 0
    assert "node=~gpu-[3]" in active.output and "reseating gpu-3" in active.output

    expired = run("incidents", "silences", "expire", number, "-c", c)
    assert expired.exit_code == 0, expired.output
    assert f"silence #{number}" in expired.output and "expired" in expired.output
    again = run("incidents", "silences", "expire", number, "-c", c)
    assert again.exit_code == 1 and "already expired" in again.output

    assert "No active silences." in run("incidents", "silences", "list", "-c", c).output
    history = json.loads(run("incidents", "silences", "list", "--all", "-c", c, "--json").output)
    assert [(s["id"], s["state"]) for s in history] == [(silence["id"], "expired")]
    assert "silenced" not in run("incidents", "list", "-c", c).output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--match", "node", "--for", "2h"), "--match 'node': write LABEL=VALUE or LABEL=~REGEX"),
        (("--match", "node=~gpu-[", "--for", "2h"), "not a valid regular expression"),
        (("--match", "node=~.*", "--for", "2h"), "also matches incidents without these labels"),
        (("--match", "node=gpu-3", "--for", "soon"), "--for: 'soon' is not a duration"),
        (("--match", "node=gpu-3", "--for", "0s"), "--for: a silence must last longer than zero"),
        (("--for", "2h"), "Missing option '--match'"),
    ],
)
def test_a_bad_silence_is_refused_with_exit_2_and_nothing_stored(
    config_file: Path, arguments: tuple[str, ...], message: str
):
    c = str(config_file)
    result = run("incidents", "silence", *arguments, "-c", c)
    assert result.exit_code == 2
    assert message in result.output
    assert "No silences." in run("incidents", "silences", "list", "--all", "-c", c).output


def test_expiring_an_unknown_silence_fails_with_exit_1(config_file: Path):
    result = run("incidents", "silences", "expire", "4242", "-c", str(config_file))
    assert result.exit_code == 1
    assert "silence 4242 not found" in result.output
