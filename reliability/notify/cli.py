"""`reliability notify test`: one test message to every channel the config names, so a bad
token, a channel the bot was never invited to or an archived one is found before a page is."""

from __future__ import annotations

from typing import Any

import click

from reliability.cli_support import (
    EXIT_FAILED,
    BadInput,
    config_option,
    console,
    finish,
    json_option,
    print_json,
)
from reliability.config import Config, ConfigError
from reliability.notify import registry
from reliability.notify.base import Blocked, NotifyError

# What to do about the refusals a test meets most (Slack's codes).
FIXES = {
    "invalid_auth": "the token is wrong: set the bot token (xoxb-...) the config names",
    "not_authed": "no token was sent: set the bot token the config names",
    "token_revoked": "the token was revoked: reinstall the app and set its new bot token",
    "account_inactive": "the bot's account is deactivated: reactivate or reinstall the app",
    "missing_scope": "the app lacks the chat:write scope: add it and reinstall the app",
    "not_in_channel": "invite the bot to the channel (/invite @your-bot)",
    "channel_not_found": "no such channel, or a private one the bot is not in: check the "
    "name or invite the bot",
    "is_archived": "the channel is archived: unarchive it or route to another channel",
}


@click.group()
def notify() -> None:
    """Notifications: check that pages reach on-call."""


@notify.command("test")
@config_option
@json_option
def test(config: Config, as_json: bool) -> None:
    """Send one test message to each configured channel (the default and every route's) and
    say, per channel, what failed. Exit 1 if any failed."""
    try:
        notifiers = registry.configured(config)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if not notifiers:
        raise BadInput("no notifier is configured: add a `slack:` section (channel, token_env)")
    results: list[dict[str, Any]] = []
    for notifier in notifiers:
        for destination in notifier.destinations():
            result: dict[str, Any] = {"notifier": notifier.name, "destination": destination}
            try:
                root = notifier.send_test(destination)
            except NotifyError as exc:
                fix = FIXES.get(exc.reason)
                if fix is None and not isinstance(exc, Blocked):
                    fix = "retry later" if exc.retryable else None
                result |= {"ok": False, "error": exc.reason, "fix": fix}
            else:
                result |= {"ok": True, "posted_to": root.destination, "ts": root.ref}
            results.append(result)
    failed = [r for r in results if not r["ok"]]
    if as_json:
        print_json({"ok": not failed, "channels": results})
    else:
        for r in results:
            if r["ok"]:
                console.print(f"{r['notifier']} {r['destination']}: ok ({r['posted_to']})")
            else:
                fix = f": {r['fix']}" if r["fix"] else ""
                console.print(f"{r['notifier']} {r['destination']}: FAILED {r['error']}{fix}")
        console.print(f"{len(results) - len(failed)} of {len(results)} channel(s) reached")
    finish(EXIT_FAILED if failed else 0)
