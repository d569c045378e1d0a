"""The daemon's HTTP surface: `/metrics`, `/healthz`, `/readyz`, the read API of the
reading commands, and the routes other domains mount (the webhook intake), as an ASGI app
on uvicorn.

`/metrics` only reads the snapshot the scheduled jobs fill, so a scrape never touches a
GPU, a host or an endpoint and stays fast however sick the fleet is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reliability import db, readapi
from reliability.collect.snapshot import Snapshot
from reliability.incidents.kinds import LIST_DEFAULT_LIMIT, LIST_DEFAULT_STATUS
from reliability.intake.http import Rejection, check_bearer

log = logging.getLogger("reliability.web")


@dataclass(frozen=True)
class Readiness:
    """One thing `/readyz` checks: a name and a callable returning None or a problem."""

    name: str
    check: Callable[[], str | None]


def problems_of(checks: Sequence[Readiness]) -> dict[str, str]:
    """Each check's problem by its name; empty when all pass. Blocks on what they ask."""
    return {r.name: problem for r in checks if (problem := r.check())}


def build_app(
    snapshot: Snapshot,
    *,
    readiness: list[Readiness],
    critical: Sequence[Readiness] = (),
    registry: CollectorRegistry | None = None,
    routes: Sequence[Route] = (),
) -> Starlette:
    """The ASGI app. `/readyz` answers 503 while a `readiness` check has a problem; the
    `critical` checks (pages that cannot be delivered) are shown beside them without making
    the daemon unready, since it still records and serves. `registry` holds the daemon's
    own process metrics (fresh per app); `routes` are mounted beside the probes, so each
    domain owns its endpoints."""
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)

    async def metrics(_: Request) -> Response:
        body = snapshot.exposition().encode() + generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        # Checks may touch the database: run them off the event loop.
        problems = await run_in_threadpool(problems_of, readiness)
        conditions = await run_in_threadpool(problems_of, critical)
        status = 503 if problems else 200
        body = {"ready": not problems, "problems": problems, "critical": conditions}
        return JSONResponse(body, status_code=status)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *routes,
        ]
    )


def read_routes(
    *,
    incidents: Callable[[str, int], list[dict[str, Any]]],
    status: Callable[[], dict[str, Any]],
    database_url: str,
    listen: str,
    token: SecretStr | None,
) -> list[Route]:
    """The read API that `incidents list` and `status` ask before reading the database
    themselves (readapi.py): `GET /api/v1/incidents?status=&limit=` (as the command takes
    them) answers `incidents(status, limit)`, `GET /api/v1/status` answers `status()`: each
    the JSON document the command's `--json` prints, so both paths print the same.

    Guarded as the commands expect: with a `token`, only a request bearing it (401); with
    none, only while `listen` is loopback (403 otherwise: whoever reaches the port would
    read the incidents). A request naming another database than `database_url` (its
    `X-Reliability-Database`) gets 409, a bad parameter 400, a database that fails 503:
    the command then reads directly, and says what is wrong. Each refusal is one log line
    without the request's headers."""
    key = readapi.database_key(database_url)
    off = None
    if token is None and not readapi.is_loopback(listen):
        off = (
            f"the read API is off: http.listen {listen} is not loopback and no token is "
            "configured (set http.api_token_env or http.api_token_file)"
        )
        log.warning("%s; reading commands read the database themselves", off)

    def guard(request: Request) -> None:
        if off is not None:
            raise Rejection(403, off)
        if token is not None:
            check_bearer(request, token)
        named = request.headers.get(readapi.DATABASE_HEADER)
        if named is not None and named != key:
            raise Rejection(409, "this daemon serves another database")

    async def answer(request: Request, read: Callable[[], Any]) -> Response:
        try:
            guard(request)
            try:
                document = await run_in_threadpool(read)
            except ValueError as exc:
                raise Rejection(400, str(exc)) from None
            except (db.DatabaseError, sa.exc.SQLAlchemyError) as exc:
                raise Rejection(503, f"database: {db.error_line(exc)}") from None
        except Rejection as refused:
            level = logging.WARNING if refused.status in (401, 403) else logging.INFO
            log.log(level, "GET %s: %s %s", request.url.path, refused.status, refused.error)
            return refused.response()
        # json.dumps as `--json` prints it (a NaN ratio included), not JSONResponse's.
        return Response(json.dumps(document), media_type="application/json")

    async def list_incidents(request: Request) -> Response:
        query = request.query_params
        wanted = query.get("status", LIST_DEFAULT_STATUS)
        limit = query.get("limit", str(LIST_DEFAULT_LIMIT))

        def read() -> list[dict[str, Any]]:
            if not limit.isdigit():
                raise ValueError(f"limit must be a whole number, not {limit!r}")
            return incidents(wanted, int(limit))

        return await answer(request, read)

    async def fleet_status(request: Request) -> Response:
        return await answer(request, status)

    return [
        Route(readapi.INCIDENTS_PATH, list_incidents),
        Route(readapi.STATUS_PATH, fleet_status),
    ]
