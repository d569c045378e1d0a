"""Webhook intake: alerts from other systems (Alertmanager) become incidents.

`build_routes(config)` gives the daemon the endpoints to mount on its HTTP surface.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Route

from reliability import db
from reliability.config import Config
from reliability.intake.alertmanager import PATH as ALERTMANAGER_PATH
from reliability.intake.alertmanager import alertmanager_route

log = logging.getLogger("reliability.intake")

# SQLAlchemy's default connection pool size: more transactions at once would only queue
# for a connection.
POOL_SIZE = 5


def build_routes(config: Config) -> list[Route]:
    """The intake endpoints, from the config: database, webhook token, reopen window."""
    url = config.database_url()
    token = config.webhook_token()
    if token is None:
        log.warning(
            "no webhook token configured (http.webhook_token_env or http.webhook_token_file): "
            "POST %s answers 503 to everyone",
            ALERTMANAGER_PATH,
        )
    return [
        alertmanager_route(
            lazy_sessions(url),
            token=token,
            reopen_window=timedelta(seconds=config.incidents.reopen_window),
            transactions=1 if db.normalize_url(url).get_backend_name() == "sqlite" else POOL_SIZE,
        )
    ]


def lazy_sessions(url: str) -> Callable[[], Session]:
    """New sessions on an engine made at the first call, not now: a database that is down
    (or a SQLite directory not yet creatable) when the daemon starts must not stop it."""
    factory: sessionmaker[Session] | None = None
    lock = threading.Lock()

    def new_session() -> Session:
        nonlocal factory
        with lock:
            if factory is None:
                factory = db.session_factory(db.make_engine(url))
        return factory()

    return new_session
