"""Webhook intake: alerts from other systems (Alertmanager) become incidents.

`build_routes(config)` gives the daemon the endpoints to mount on its HTTP surface.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from starlette.routing import Route

from reliability import db
from reliability.config import Config
from reliability.intake.alertmanager import PATH as ALERTMANAGER_PATH
from reliability.intake.alertmanager import alertmanager_route

log = logging.getLogger("reliability.intake")

# SQLAlchemy's default connection pool size: more transactions at once would only queue
# for a connection.
POOL_SIZE = 5


def build_routes(config: Config, database: db.LazyEngine | None = None) -> list[Route]:
    """The intake endpoints, from the config: database (the daemon's shared engine, or one
    of their own), webhook token, reopen window."""
    database = database or db.LazyEngine(config.database_url(), config.database.limits())
    token = config.webhook_token()
    if token is None:
        log.warning(
            "no webhook token configured (http.webhook_token_env or http.webhook_token_file): "
            "POST %s answers 503 to everyone",
            ALERTMANAGER_PATH,
        )
    return [
        alertmanager_route(
            database.session,
            token=token,
            reopen_window=timedelta(seconds=config.incidents.reopen_window),
            transactions=(
                1 if db.normalize_url(database.url).get_backend_name() == "sqlite" else POOL_SIZE
            ),
        )
    ]
