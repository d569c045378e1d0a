"""OpenAI-compatible inference stand-in that behaves like vLLM at the wire, with failure modes.

Endpoints: ``GET /health`` (JSON: status, pool, image, model), ``GET /v1/models`` (OpenAI
list), ``POST /v1/chat/completions`` (a ``chat.completion`` with ``usage``, or with
``"stream": true`` real SSE ``data: {...}`` chunks ending ``data: [DONE]``). Every answer
carries ``x-pool`` and ``x-image`` headers. ``GET /metrics`` is the Prometheus exposition
of the serving engine the stand-in plays (``engine``: vllm by default, sglang, tgi or
triton), with the engine's own metric names and values from the chat completions it served
(see engine_metrics.py); like the control routes, the modes never affect it.

Control (never affected by the modes): ``POST /_rig/mode`` with ``{"mode": ..., "path":
"/v1/*", "delay_s": 2, "retry_after_s": 3, "interval_s": 0.2, "times": 1}``, ``GET
/_rig/mode`` and ``GET /_rig/stats`` (requests served, by path and status, in flight).

Modes, chosen per request by the newest rule whose ``path`` (fnmatch) matches:
``ok``; ``overloaded`` (503, OpenAI error body "Server busy..."); ``rate_limited`` (429,
``Retry-After``); ``broken`` (500, as a bad build answers while its health check passes);
``slow`` (answer after ``delay_s``); ``stall`` (200 and headers, then only keep-alives,
a blank line for JSON or ``: keep-alive`` for SSE, every ``interval_s``, the way hosted
APIs hold a queued request, so only a client's total deadline ends it);
``garbage`` (200, a non-JSON body); ``die`` (connections reset and the listener closed,
like a crashed process). ``times`` makes a rule expire after that many requests; setting
``ok`` on ``*`` clears every rule.

As a hosted API (``tls``, ``api_key``): served over TLS with a certificate of the rig's own
CA (tls.py) for one name, and as strict as a hosted API's front: a TLS client that sends
no server name (SNI) or another one is refused in the handshake, a request whose ``Host``
is not that name gets 421, one without ``Authorization: Bearer <api_key>`` gets OpenAI's
401. The control routes and ``/metrics`` stay open to the rig.

Run one: ``python -m reliability.testing.inference --port 8000 --pool blue --image IMG
[--engine sglang]``.
Run many on one loop: ``reliability.testing.inference_group.serve_many``.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import hmac
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reliability.catalog import ENGINES, Engine
from reliability.testing.engine_metrics import ServingStats, Ticket
from reliability.testing.tls import ServerIdentity

Mode = Literal["ok", "overloaded", "rate_limited", "broken", "slow", "stall", "garbage", "die"]
MODES: frozenset[str] = frozenset(get_args(Mode))
DEFAULT_MODEL = "deepseek-ai/DeepSeek-V3"
DEFAULT_IMAGE = "vllm/vllm-openai@sha256:" + "0" * 64
STALL_LIMIT_S = 600.0  # even a stall ends: no test may leak a connection forever
DEFAULT_KEEPALIVE_S = 0.25
DEFAULT_SLOW_S = 2.0
REPLY_TOKENS = 16
DEFAULT_KV_CACHE_TOKENS = 4096
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class InferenceSpec:
    """What one stand-in reports about itself, and where it listens (port 0: any free).
    `engine` is the serving engine whose metrics ``/metrics`` speaks; `kv_cache_tokens` the
    size of the KV cache its running requests fill; `max_num_seqs` and `token_s` its
    capacity. `tls`: serve HTTPS as that name only;
    `api_key`: the bearer token every API request must carry."""

    pool: str = "blue"
    image: str = DEFAULT_IMAGE
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 0
    engine: Engine = "vllm"
    kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS
    tls: ServerIdentity | None = None
    api_key: str | None = field(default=None, repr=False)
    # vLLM's --max-num-seqs: at most this many completions run at once, the others wait
    # their turn (None: no limit); `token_s`: the time each generated token takes. Together
    # they make a known capacity: max_num_seqs / (REPLY_TOKENS * token_s) requests/s.
    max_num_seqs: int | None = None
    token_s: float = 0.0

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


@dataclass
class ModeRule:
    mode: Mode = "ok"
    path: str = "*"
    delay_s: float = 0.0
    retry_after_s: int = 1
    interval_s: float = 0.0
    times: int | None = None


class Controls:
    """Mode rules and counters of one stand-in; safe to change from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[ModeRule] = []
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.in_flight = 0
        self.stopping = False
        self.on_die: Callable[[], None] = lambda: os._exit(1)
        # Set by create_app, which knows the engine the stand-in plays.
        self.serving: ServingStats | None = None

    def set_mode(self, mode: str, **options: Any) -> None:
        """Add a rule (replacing one on the same path); ``ok`` on ``*`` clears them all.

        Raises ValueError or TypeError for an unknown mode or option or a bad value.
        """
        known = {f.name for f in fields(ModeRule)} - {"mode"}
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {sorted(MODES)}")
        if unknown := set(options) - known:
            raise ValueError(f"unknown mode options {sorted(unknown)}")
        times = options.get("times")
        # Values may come from JSON: coerce now so a bad one fails here, not mid-request.
        rule = ModeRule(
            mode=mode,  # type: ignore[arg-type]
            path=str(options.get("path", "*")),
            delay_s=float(options.get("delay_s", 0.0)),
            retry_after_s=int(options.get("retry_after_s", 1)),
            interval_s=float(options.get("interval_s", 0.0)),
            times=None if times is None else int(times),
        )
        with self._lock:
            if mode == "ok" and rule.path == "*" and rule.times is None:
                self._rules = []
                return
            self._rules = [r for r in self._rules if r.path != rule.path] + [rule]

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(rule) for rule in self._rules]

    def take(self, path: str) -> ModeRule:
        """The rule for this request, counting it against ``times``."""
        with self._lock:
            self.requests[path] += 1
            self.in_flight += 1
            for rule in reversed(self._rules):
                if fnmatch.fnmatchcase(path, rule.path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return ModeRule()

    def finished(self, status: int | None, ticket: Ticket | None = None) -> None:
        """A request is over (its stream included); ``status`` None: it was never answered.
        `ticket`: the chat completion's place in the serving metrics, ended with it."""
        with self._lock:
            self.in_flight -= 1
            if status is not None:
                self.statuses[str(status)] += 1
        if ticket is not None and self.serving is not None:
            self.serving.end(ticket)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "by_path": dict(self.requests),
                "by_status": dict(self.statuses),
                "in_flight": self.in_flight,
            }


def _error(
    status: int, message: str, kind: str, code: str | int | None, **headers: str
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _reply_tokens(spec: InferenceSpec, count: int) -> list[str]:
    base = f"Rig reply from the {spec.pool} pool serving {spec.model}.".split()
    return [base[i % len(base)] for i in range(count)]


def _completion(spec: InferenceSpec, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The whole (non-streamed) answer and the tokens it is made of."""
    wanted = body.get("max_completion_tokens") or body.get("max_tokens") or REPLY_TOKENS
    tokens = _reply_tokens(spec, min(int(wanted), REPLY_TOKENS))
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"]) or 1
    answer = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(tokens)},
                "logprobs": None,
                "finish_reason": "length" if int(wanted) < REPLY_TOKENS else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        },
    }
    return answer, tokens


async def _sse(
    answer: dict[str, Any],
    tokens: list[str],
    include_usage: bool,
    pace_s: float,
    on_first_token: Callable[[], None] = lambda: None,
) -> AsyncIterator[bytes]:
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps(head | {"choices": [choice]}).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for i, token in enumerate(tokens):
        if pace_s:
            await asyncio.sleep(pace_s)
        if i == 0:
            on_first_token()
        yield chunk({"content": token if i == len(tokens) - 1 else token + " "})
    yield chunk({}, answer["choices"][0]["finish_reason"])
    if include_usage:
        yield (
            b"data: "
            + json.dumps(head | {"choices": [], "usage": answer["usage"]}).encode()
            + b"\n\n"
        )
    yield b"data: [DONE]\n\n"


async def _seated(
    body: AsyncIterator[bytes], seats: asyncio.Semaphore | None, on_seated: Callable[[], None]
) -> AsyncIterator[bytes]:
    """A stream that waits for a seat (max-num-seqs) before its first chunk and holds it
    until it ends or its client goes away; one never started never takes a seat."""
    if seats is not None:
        await seats.acquire()
    try:
        on_seated()
        async for chunk in body:
            yield chunk
    finally:
        if seats is not None:
            seats.release()


async def _counted(
    body: AsyncIterator[Any], on_end: Callable[[], None], on_done: Callable[[], None]
) -> AsyncIterator[Any]:
    """`body`, then `on_done` once its last chunk went out; `on_end` however it ends."""
    try:
        async for chunk in body:
            yield chunk
        on_done()
    finally:
        on_end()


async def _keepalive(controls: Controls, beat: bytes, interval_s: float) -> AsyncIterator[bytes]:
    deadline = time.monotonic() + STALL_LIMIT_S
    while not controls.stopping and time.monotonic() < deadline:
        yield beat
        await asyncio.sleep(interval_s)


def _refusal(spec: InferenceSpec, request: Request) -> Response | None:
    """What a hosted API's front answers a request not meant for it, or None."""
    if spec.tls is not None:
        host = request.headers.get("host", "")
        if host.rsplit(":", 1)[0] != spec.tls.hostname:
            return _error(
                421,
                f"Misdirected request: this server answers for {spec.tls.hostname}, not "
                f"{host or 'a request without Host'}.",
                "invalid_request_error",
                "misdirected_request",
            )
    if spec.api_key is not None:
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        if not hmac.compare_digest(given[len("Bearer ") :].encode(), spec.api_key.encode()):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
    return None


def server_tls(identity: ServerIdentity) -> ssl.SSLContext:
    """The TLS context of a hosted stand-in: the certificate is handed out only to a client
    that asks for its name (SNI); without one the handshake finds no certificate and fails,
    with another name it is refused (unrecognized_name)."""
    named = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    named.load_cert_chain(identity.cert_file, identity.key_file)
    named.set_alpn_protocols(["http/1.1"])
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no certificate of its own
    base.set_alpn_protocols(["http/1.1"])

    def by_name(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> int | None:
        if name != identity.hostname:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = named
        return None

    base.sni_callback = by_name  # type: ignore[assignment]
    return base


def create_app(spec: InferenceSpec, controls: Controls) -> Starlette:
    """The ASGI app of one stand-in."""
    headers = {"x-pool": spec.pool, "x-image": spec.image}
    serving = controls.serving = ServingStats(
        spec.engine, model=spec.model, kv_cache_tokens=spec.kv_cache_tokens
    )
    seats = asyncio.Semaphore(spec.max_num_seqs) if spec.max_num_seqs else None

    async def wants_stream(request: Request) -> bool:
        if request.url.path != "/v1/chat/completions":
            return False
        try:
            return bool((await request.json()).get("stream"))
        except (ValueError, AttributeError):
            return False

    async def apply(
        request: Request,
        rule: ModeRule,
        handler: Callable[[Request, ModeRule], Awaitable[Response]],
    ) -> Response:
        if rule.mode == "die":
            controls.on_die()
            await asyncio.sleep(0.01)  # let the reset land; what we return is never sent
            return Response(status_code=500)
        if rule.delay_s or rule.mode == "slow":
            await asyncio.sleep(rule.delay_s or DEFAULT_SLOW_S)
        if rule.mode == "overloaded":
            return _error(503, "Server busy, please try again later.", "server_error", None)
        if rule.mode == "rate_limited":
            return _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                "rate_limit_exceeded",
                **{"retry-after": str(rule.retry_after_s)},
            )
        if rule.mode == "broken":
            return _error(500, "Internal server error: the engine failed.", "server_error", None)
        if rule.mode == "garbage":
            return Response(
                b"<html><body>upstream said something</body>", media_type="application/json"
            )
        if rule.mode == "stall":
            stream = await wants_stream(request)
            beat = b": keep-alive\n\n" if stream else b"\n"
            media = "text/event-stream" if stream else "application/json"
            return StreamingResponse(
                _keepalive(controls, beat, rule.interval_s or DEFAULT_KEEPALIVE_S), media_type=media
            )
        return await handler(request, rule)

    def controlled(
        handler: Callable[[Request, ModeRule], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = _refusal(spec, request)
            if refused is not None:
                return refused
            route, began = request.url.path, time.monotonic()
            rule = controls.take(route)
            # A chat completion waits from here until its answer starts (after a delay).
            ticket = request.state.ticket = serving.arrive() if route == CHAT_PATH else None
            try:
                response = await apply(request, rule, handler)
            except BaseException:
                controls.finished(None, ticket)
                raise
            response.headers.update(headers)
            status = None if rule.mode == "die" else response.status_code

            def ended() -> None:
                controls.finished(status, ticket)
                if status is not None:
                    serving.answered(route, request.method, status, time.monotonic() - began)

            if isinstance(response, StreamingResponse):
                # In flight until the stream ends, or the client goes away mid-stream; the
                # answer counts as complete only once its last chunk went out.
                done = getattr(request.state, "on_done", lambda: None)
                response.body_iterator = _counted(response.body_iterator, ended, done)
            else:
                ended()
            return response

        return endpoint

    async def health(request: Request, rule: ModeRule) -> Response:
        return JSONResponse(
            {"status": "ok", "pool": spec.pool, "image": spec.image, "model": spec.model}
        )

    async def models(request: Request, rule: ModeRule) -> Response:
        card = {
            "id": spec.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
        }
        return JSONResponse(
            {"object": "list", "data": [card | {"root": spec.model, "parent": None}]}
        )

    async def chat(request: Request, rule: ModeRule) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Invalid JSON body.", "BadRequestError", 400)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("messages"), list)
            or not body["messages"]
        ):
            return _error(400, "'messages' must be a non-empty list.", "BadRequestError", 400)
        if body.get("model", spec.model) != spec.model:
            return _error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", 404)
        try:
            answer, tokens = _completion(spec, body)
        except (TypeError, ValueError):
            return _error(400, "'max_tokens' must be an integer.", "BadRequestError", 400)
        ticket: Ticket = request.state.ticket
        reason = answer["choices"][0]["finish_reason"]
        tokens_held = answer["usage"]["total_tokens"]
        if not body.get("stream"):
            if seats is not None:
                await seats.acquire()  # waiting, as a request beyond max-num-seqs does
            try:
                serving.start(ticket, tokens=tokens_held)
                await asyncio.sleep(spec.token_s * len(tokens))
            finally:
                if seats is not None:
                    seats.release()
            serving.first_token(ticket)
            serving.complete(ticket, reason)
            return JSONResponse(answer)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        request.state.on_done = lambda: serving.complete(ticket, reason)
        pace_s = max(rule.interval_s, spec.token_s)
        stream = _sse(answer, tokens, usage, pace_s, lambda: serving.first_token(ticket))
        return StreamingResponse(
            _seated(stream, seats, lambda: serving.start(ticket, tokens=tokens_held)),
            media_type="text/event-stream",
        )

    async def set_mode(request: Request) -> Response:
        try:
            options = await request.json()
            controls.set_mode(options.pop("mode"), **options)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"rules": controls.rules()})

    async def get_mode(request: Request) -> Response:
        return JSONResponse({"rules": controls.rules()})

    async def stats(request: Request) -> Response:
        return JSONResponse(
            controls.stats() | {"pool": spec.pool, "image": spec.image, "model": spec.model}
        )

    async def metrics(request: Request) -> Response:
        return Response(serving.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/health", controlled(health)),
            Route("/v1/models", controlled(models)),
            Route(CHAT_PATH, controlled(chat), methods=["POST"]),
            Route("/_rig/mode", set_mode, methods=["POST"]),
            Route("/_rig/mode", get_mode),
            Route("/_rig/stats", stats),
            Route("/metrics", metrics),
        ]
    )


def uvicorn_config(app: Starlette, tls: ServerIdentity | None = None) -> uvicorn.Config:
    """Quiet uvicorn settings shared by the CLI and the in-process group; with `tls`, HTTPS
    as `server_tls` sets it up."""

    def tls_context(
        config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        assert tls is not None
        return server_tls(tls)

    # log_config=None leaves the host's logging alone (pytest's capture, the daemon's).
    return uvicorn.Config(
        app,
        ssl_context_factory=None if tls is None else tls_context,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        loop="asyncio",
        ws="none",
        timeout_graceful_shutdown=1,
    )


def listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), backlog=1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.testing.inference")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--engine", choices=ENGINES, default="vllm", help="metrics to speak")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="completions at once")
    parser.add_argument("--token-s", type=float, default=0.0, help="seconds per token")
    args = parser.parse_args(argv)
    spec = InferenceSpec(
        pool=args.pool,
        image=args.image,
        model=args.model,
        host=args.host,
        port=args.port,
        engine=args.engine,
        max_num_seqs=args.max_num_seqs,
        token_s=args.token_s,
    )
    controls = Controls()  # on_die: os._exit(1), the crash this mode stands for
    sock = listen(spec.host, spec.port)
    print(
        f"inference stand-in ({spec.pool}, {spec.image}) on http://{spec.host}:{spec.port}",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn_config(create_app(spec, controls), spec.tls)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
