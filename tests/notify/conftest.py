"""Fixtures of the outbox tests: a Slack client on the stand-in and dispatchers through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_helpers import slack_config

from reliability.config import SlackConfig
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.slack import SlackNotifier
from reliability.testing.slack import SlackStandIn


@pytest.fixture
def notifier(slack: SlackStandIn) -> SlackNotifier:
    return SlackNotifier(slack.token, base_url=slack.api_url, timeout_s=2)


@pytest.fixture
def dispatcher_factory(
    engine: sa.Engine, notifier: SlackNotifier
) -> Iterator[Callable[..., Dispatcher]]:
    """dispatcher_factory(slack=SlackConfig, **settings) -> a Dispatcher, stopped at the end."""
    made: list[Dispatcher] = []

    def make(slack: SlackConfig | None = None, **settings: Any) -> Dispatcher:
        dispatcher = Dispatcher(
            engine,
            notifier,
            slack or slack_config(),
            grafana_url=settings.pop("grafana_url", None),
            settings=DispatchSettings(**({"backoff_cap_s": 1.0} | settings)),
        )
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop()


@pytest.fixture
def dispatcher(dispatcher_factory: Callable[..., Dispatcher]) -> Dispatcher:
    return dispatcher_factory()
