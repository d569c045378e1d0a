"""Webhook intake: alerts from other systems (Alertmanager) become incidents.

`build_routes(config, writer)` gives the daemon the endpoints to mount on its HTTP surface.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from starlette.routing import Route

from reliability import db
from reliability.config import Config
from reliability.intake.alertmanager import PATH as ALERTMANAGER_PATH
from reliability.intake.alertmanager import alertmanager_route
from reliability.writer import BatchWriter

log = logging.getLogger("reliability.intake")


def build_routes(config: Config, writer: BatchWriter | None = None) -> list[Route]:
    """The intake endpoints, from the config: the daemon's batch writer (or one of their
    own on the configured database), webhook token, reopen window."""
    if writer is None:
        database = db.LazyEngine(
            config.database_url(),
            config.database.limits(),
            sqlite_synchronous=config.database.sqlite_synchronous,
        )
        writer = BatchWriter(database.session, name="intake")
    token = config.webhook_token()
    if token is None:
        log.warning(
            "no webhook token configured (http.webhook_token_env or http.webhook_token_file): "
            "POST %s answers 503 to everyone",
            ALERTMANAGER_PATH,
        )
    return [
        alertmanager_route(
            writer, token=token, reopen_window=timedelta(seconds=config.incidents.reopen_window)
        )
    ]
