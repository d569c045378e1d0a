"""Fixtures of the outbox tests: a Slack client on the stand-in and dispatchers through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from outbox_helpers import slack_config

from reliability.config import SlackConfig
from reliability.dashboards import links
from reliability.incidents.models import IncidentRead
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.slack import SlackClient, SlackNotifier
from reliability.testing.slack import SlackStandIn


@pytest.fixture
def slack_client(slack: SlackStandIn) -> SlackClient:
    return SlackClient(slack.token, base_url=slack.api_url, timeout_s=2)


def dashboard_links(grafana_url: str | None) -> Callable[[IncidentRead], str] | None:
    """The daemon's `link_for`: the Grafana dashboard of the incident."""
    if grafana_url is None:
        return None
    return lambda incident: links.incident_url(
        grafana_url,
        labels=incident.labels,
        started_at=incident.started_at,
        resolved_at=incident.resolved_at,
    )


@pytest.fixture
def dispatcher_factory(
    engine: sa.Engine, slack_client: SlackClient
) -> Iterator[Callable[..., Dispatcher]]:
    """dispatcher_factory(slack=SlackConfig, **settings) -> a Dispatcher, stopped at the end."""
    made: list[Dispatcher] = []

    def make(slack: SlackConfig | None = None, **settings: Any) -> Dispatcher:
        dispatcher = Dispatcher(
            engine,
            SlackNotifier(slack_client, slack or slack_config()),
            link_for=dashboard_links(settings.pop("grafana_url", None)),
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
