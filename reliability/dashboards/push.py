"""Upload built dashboards through Grafana's HTTP API (`POST /api/dashboards/db`).

Every dashboard gets its own result, so one rejected upload never hides (or is hidden by)
the others; only an answer of `"status": "success"` counts as pushed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from reliability.dashboards.build import Built

TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class PushResult:
    """What Grafana answered for one dashboard; `detail` is the line an operator reads."""

    uid: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.uid}: {'pushed' if self.ok else 'FAILED'}: {self.detail}"


def client(url: str, token: str, *, timeout: float = TIMEOUT_S) -> httpx.Client:
    """An HTTP client for the Grafana at `url`, authenticated with a service-account token."""
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def payload(built: Built, folder_uid: str) -> dict[str, Any]:
    """The request body: the model without `id`, so Grafana matches it by uid."""
    return {
        "dashboard": {**built.model, "id": None},
        "folderUid": folder_uid,
        "overwrite": True,
        "message": f"reliability dashboards push ({built.source.name})",
    }


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def push_one(http: httpx.Client, built: Built, folder_uid: str) -> PushResult:
    """Upload one dashboard; a transport error or any answer but success is a failure."""
    try:
        response = http.post("/api/dashboards/db", json=payload(built, folder_uid))
    except httpx.HTTPError as exc:
        return PushResult(built.uid, False, f"cannot reach {http.base_url}: {exc or type(exc)}")
    body = _answer(response)
    if response.status_code == 200 and body.get("status") == "success":
        url = f"{http.base_url}{body.get('url', '')}"
        return PushResult(built.uid, True, f"version {body.get('version')} at {url}")
    reason = body.get("message") or response.text.strip()[:200] or response.reason_phrase
    status = f" ({body['status']})" if body.get("status") else ""
    return PushResult(built.uid, False, f"HTTP {response.status_code}{status}: {reason}")


def push_all(http: httpx.Client, dashboards: Sequence[Built], folder_uid: str) -> list[PushResult]:
    """Upload every dashboard, one result each, in order."""
    return [push_one(http, built, folder_uid) for built in dashboards]
