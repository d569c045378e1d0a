"""The daemon's HTTP surface: `/metrics`, `/healthz`, `/readyz` and the routes other domains
mount (the webhook intake), as an ASGI app on uvicorn.

`/metrics` only reads the snapshot the scheduled jobs fill, so a scrape never touches a
GPU, a host or an endpoint and stays fast however sick the fleet is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reliability.collect.snapshot import Snapshot


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
