"""Every notifier, by the name its outbox rows carry: how to tell it is configured, how to
build it. The one place a new notifier is registered (see notify/base.py).

A static table, filled by no import side effect; builders import their client lazily, so
writing outbox rows never loads slack_sdk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reliability.config import Config
from reliability.notify.base import Notifier


@dataclass(frozen=True)
class Registration:
    configured: Callable[[Config], bool]
    build: Callable[[Config], Notifier]


def _slack(config: Config) -> Notifier:
    from reliability.notify.slack import SlackClient, SlackNotifier

    assert config.slack is not None
    client = SlackClient(config.slack_token(), base_url=config.slack.base_url)
    return SlackNotifier(client, config.slack)


NOTIFIERS: dict[str, Registration] = {
    "slack": Registration(configured=lambda config: config.slack is not None, build=_slack),
}


def configured(config: Config) -> list[Notifier]:
    """The notifiers the config sets up, built."""
    return [entry.build(config) for entry in NOTIFIERS.values() if entry.configured(config)]
