"""What every webhook intake checks before it trusts a request: the bearer token, the content
type, the body's size and its JSON. Each check fails with a `Rejection` that the endpoint
turns into a JSON error and one log line.

Kept apart from any one sender's payload so the next intake (Grafana, a cloud monitor)
gets the same guarantees without copying them.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1_000_000


class Rejection(Exception):
    """A request the intake refuses: HTTP `status`, a short `error`, optional `details`.

    Messages never quote the request's headers, so a token cannot reach the log this way.
    """

    def __init__(self, status: int, error: str, details: list[str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error}
        if self.details:
            body["details"] = self.details
        headers = {"WWW-Authenticate": 'Bearer realm="reliability"'} if self.status == 401 else {}
        return JSONResponse(body, status_code=self.status, headers=headers)


def check_bearer(request: Request, token: SecretStr) -> None:
    """Pass only a request whose `Authorization: Bearer` matches `token`, compared in
    constant time so the response time does not leak how much of a guess was right."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Rejection(401, "missing bearer token")
    expected = token.get_secret_value().encode()
    if not hmac.compare_digest(presented.strip().encode(), expected):
        raise Rejection(401, "wrong bearer token")


def check_json_content_type(request: Request) -> None:
    """Refuse anything but `application/json` (parameters such as charset allowed): a form or
    text body here is a misconfigured sender, better told than guessed at."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise Rejection(415, f"content type must be application/json, got {media_type or 'none'!r}")


async def read_body(request: Request, *, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes.

    A declared Content-Length over the limit is refused before reading; the count while
    reading catches a sender that declared less, or chunked with no length at all, so no
    more than `limit` bytes are ever held.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Rejection(413, f"body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, f"body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The body as JSON; 400 with the position of the first error, or when it is nested
    deeper than the parser can follow (no webhook is: it is a hostile or broken sender)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Rejection(400, "malformed JSON", [str(exc)]) from None
    except RecursionError:
        raise Rejection(400, "malformed JSON", ["nested too deeply"]) from None


def validation_details(exc: ValidationError) -> list[str]:
    """One `field.path: message` line per problem, without the offending values (they may be
    large, or hold something that does not belong in a log)."""
    return [
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
