"""Grafana HTTP API stand-in: ``POST /api/dashboards/db`` at the wire, on loopback.

    with GrafanaStandIn(token="glsa_test") as grafana:
        ...  # push to grafana.url with that bearer token
        assert grafana.dashboards["reliability-gpu-fleet"]["version"] == 1

It answers like Grafana: 401 ``{"message": "Unauthorized"}`` without the right bearer token,
400 for a body that is not a save request or names an unknown folder, 412
``{"status": "version-mismatch"}`` when ``overwrite`` is false and the stored version differs,
else 200 ``{"status": "success", "uid", "id", "url", "version", "slug"}``.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from reliability.testing.inference import listen, uvicorn_config

DEFAULT_TOKEN = "glsa_standin_0000000000000000000000000000_00000000"
START_TIMEOUT_S = 10.0


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _shape_error(body: Any, folders: set[str]) -> str | None:
    """Why a body is not a dashboard save request Grafana would accept, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
        return "bad request data: dashboard is required"
    dashboard = body["dashboard"]
    for key, kind in (("uid", str), ("title", str), ("panels", list), ("schemaVersion", int)):
        if not isinstance(dashboard.get(key), kind):
            return f"bad request data: dashboard.{key} must be a {kind.__name__}"
    if not isinstance(body.get("overwrite", False), bool):
        return "bad request data: overwrite must be a boolean"
    if body.get("folderUid") not in folders:
        return "folder not found"
    return None


class GrafanaStandIn:
    """The stand-in on a free loopback port, served from a thread; a context manager."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, folders: tuple[str, ...] = ("reliability",)):
        self.token = token
        self.folders = set(folders)
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        app = Starlette(routes=[Route("/api/dashboards/db", self._save, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn_config(app))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> GrafanaStandIn:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("Grafana stand-in did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(START_TIMEOUT_S)
        self._sock.close()

    async def _save(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"message": "Unauthorized"}, 401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "bad request data"}, 400)
        self.requests.append(body)
        if error := _shape_error(body, self.folders):
            return JSONResponse({"message": error}, 400)
        return self._store(body["dashboard"], overwrite=body.get("overwrite", False))

    def _store(self, dashboard: dict[str, Any], *, overwrite: bool) -> JSONResponse:
        uid = dashboard["uid"]
        with self._lock:
            stored = self.dashboards.get(uid)
            if stored and not overwrite and dashboard.get("version") != stored["version"]:
                return JSONResponse(
                    {
                        "status": "version-mismatch",
                        "message": "The dashboard has been changed by someone else",
                    },
                    412,
                )
            number = stored["id"] if stored else len(self.dashboards) + 1
            version = stored["version"] + 1 if stored else 1
            self.dashboards[uid] = {**dashboard, "id": number, "version": version}
        slug = _slug(dashboard["title"])
        return JSONResponse(
            {
                "status": "success",
                "uid": uid,
                "id": number,
                "version": version,
                "slug": slug,
                "url": f"/d/{uid}/{slug}",
            }
        )
