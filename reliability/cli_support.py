"""What every command shares: `-c/--config`, `--json`, the database session, and the
mapping of failures to exit codes (0 success, 1 the operation failed, 2 bad usage/config).
"""

from __future__ import annotations

import functools
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from reliability.config import Config

# The config, the database and the domains are imported by the commands that use them, so
# `reliability --help` and a command that reads no database start in a fraction of a second.

EXIT_FAILED = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandFailed(click.ClickException):
    """The operation itself failed (exit 1): a missing incident, a refused transition."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        err_console.print(f"[red]error:[/red] {self.message}", markup=True, soft_wrap=True)


class BadInput(CommandFailed):
    """Bad usage, config or environment (exit 2): the command never started its work."""

    exit_code = EXIT_USAGE


def load_config(path: Path | str | None = None, *, domain_checks: bool = True) -> Config:
    """The config at `path` (or the default), with every domain's checks of it: what
    `config check`, the daemon, the demo and every command that acts on the fleet load.

    `domain_checks=False` keeps the config's own validation and leaves out detection's
    and the runbooks' (every custom rule, every automatic runbook file read and
    validated): for a command that only reads or records incidents, which uses neither
    and must start at once.
    """
    from reliability import config as config_

    if not domain_checks:
        return config_.load(path)
    from reliability.detect.checks import check_rules
    from reliability.runbooks.load import check_config as check_runbooks

    return config_.load(path, checks=[check_rules, check_runbooks])


def finish(code: int) -> NoReturn:
    """End a command that printed its own result with `code`: how a command whose exit
    status is its answer (`status`, `daemon --once`) exits. A failure raises CommandFailed
    or BadInput instead, with its message."""
    click.get_current_context().exit(code)


def config_option(fn: F | None = None, *, domain_checks: bool = True) -> Any:
    """Add `-c/--config FILE` and hand the loaded Config to the command as `config`
    (`@config_option`, or `@config_option(domain_checks=False)`: see load_config)."""
    if fn is None:
        return functools.partial(config_option, domain_checks=domain_checks)

    @click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $RELIABILITY_CONFIG, then ./reliability.yaml).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: Path | None, **kwargs: Any) -> Any:
        from reliability.config import ConfigError

        try:
            config = load_config(config_path, domain_checks=domain_checks)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        return fn(*args, config=config, **kwargs)

    return wrapper  # type: ignore[return-value]


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def direct_option(fn: F) -> F:
    """`--direct`: read the database (and the daemons' /metrics) in this process, not
    through the running daemon's read API."""
    return click.option(
        "--direct",
        is_flag=True,
        help="Read the database in this process instead of asking the running daemon.",
    )(fn)


# The daemon's answer may wait on the database and on the other members' /metrics.
DAEMON_ANSWER_TIMEOUT = 10.0


def from_daemon(config: Config, path: str, params: dict[str, str] | None = None) -> Any:
    """The running daemon's JSON answer to GET `path` of its read API (at the config's
    `http.listen`), or None: nothing listens there (refused at once), no answer in time, or
    it refused (another database, a missing or wrong token, an older daemon without the
    API) or failed. The command then reads the database itself, as with no daemon.

    Imports no database layer: that is the point of asking."""
    import json
    import urllib.parse

    from reliability import readapi
    from reliability.config import ConfigError

    try:
        headers = {readapi.DATABASE_HEADER: readapi.database_key(config.database_url())}
        token = config.api_token()
    except ConfigError:
        return None  # a secret this process cannot read: the direct path says which
    if token is not None:
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    url = readapi.base_url(config.http.listen) + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        body = readapi.get(url, timeout=DAEMON_ANSWER_TIMEOUT, headers=headers)
        return json.loads(body)
    except (readapi.DaemonUnreachable, ValueError):
        return None


def print_json(data: Any) -> None:
    def default(o: Any) -> Any:
        if hasattr(o, "model_dump"):  # a pydantic model
            return o.model_dump(mode="json")
        if hasattr(o, "isoformat"):
            return o.isoformat()
        return str(o)

    sys.stdout.write(json.dumps(data, default=default, indent=2) + "\n")


def who() -> str:
    """The operator, as recorded on what a command does."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@contextmanager
def database_engine(config: Config, *, check: bool = True) -> Iterator[Engine]:
    """An engine on the configured database, disposed after.

    Connection failures and an out-of-date schema become BadInput (exit 2) with the
    fix in the message, never a traceback.
    """
    from reliability import db
    from reliability.config import ConfigError

    try:
        engine = db.make_engine(
            config.database_url(),
            config.database.limits(),
            sqlite_synchronous=config.database.sqlite_synchronous,
        )
        if check:
            db.check_schema(engine)
    except (ConfigError, db.DatabaseError) as exc:
        raise BadInput(str(exc)) from None
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def database(config: Config, *, check: bool = True) -> Iterator[Session]:
    """A session on the configured database, committed on success."""
    from reliability import db

    with (
        database_engine(config, check=check) as engine,
        db.session_factory(engine)() as session,
        session.begin(),
    ):
        yield session


MAX_FROM_NOW = timedelta(days=3653)  # and far from datetime's year 9999


def parse_time(text: str, now: datetime) -> datetime:
    """`now`, `+DURATION`/`-DURATION` from now, or ISO 8601 with an offset (or Z)."""
    from reliability.durations import parse_duration

    text = text.strip()
    if text == "now":
        return now
    if re.fullmatch(r"[+-]\S+", text):
        seconds = parse_duration(text[1:])
        return now + timedelta(seconds=seconds if text[0] == "+" else -seconds)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r}: write now, a time from now (+2h, -30m) or ISO 8601 with its offset "
            "(2026-12-05T09:00+01:00, or Z for UTC)"
        ) from None
    if at.tzinfo is None:
        raise ValueError(
            f"{text!r} has no UTC offset, so it could be any zone's; add one, e.g. "
            f"{at:%Y-%m-%dT%H:%M}+01:00 or {at:%Y-%m-%dT%H:%M}Z"
        )
    return at.astimezone(UTC)


def time_option(name: str, text: str | None, now: datetime) -> datetime:
    """The time option `name` (`parse_time`), `now` when not given; BadInput naming it."""
    if text is None:
        return now
    try:
        at = parse_time(text, now)
    except ValueError as exc:
        raise BadInput(f"{name}: {exc}") from None
    if abs(at - now) > MAX_FROM_NOW:
        raise BadInput(f"{name}: {text!r} is over 10 years from now; give a nearer time")
    return at
