"""What each operation of a plan does when a run performs it: a command over SSH, or a check
made from the reliability host (HTTP until an answer, a soak, a first token, a drain).

`Actions.perform(op, values, deadline)` runs one operation and returns its outcome; it
never raises for a failure of the system it looks at (that is an `OpOutcome` with `ok`
False), so the engine decides about retries and undo in one place. Values an operation
reads for later (`Op.saves`) go into `values`; operations that need them take them from
there, shell-quoted.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

import httpx

from reliability import catalog
from reliability.runbooks import ops
from reliability.runbooks.ops import LOCAL, AtRun, Op
from reliability.ssh import CommandResult, SshError, SshPool, SshTarget

EXCERPT = 2000  # characters of a command's output kept in the record
DRAIN_SETTLE = 0.3  # seconds after a balancer reload before a member's load is read
# Engines' own gauges of requests on the node (running, waiting): vLLM, SGLang, TGI, Triton.
BUSY_METRICS = frozenset(
    m.name
    for m in (
        catalog.VLLM_RUNNING,
        catalog.VLLM_WAITING,
        catalog.SGLANG_RUNNING,
        catalog.SGLANG_QUEUE,
        catalog.TGI_QUEUE,
        catalog.TGI_BATCH,
        catalog.TRITON_PENDING,
    )
)
_SECRET_SHAPES = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]+|sk-[A-Za-z0-9_-]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|(?i:password|passwd|token|secret)=\S+)"
)


@dataclass(slots=True)
class OpOutcome:
    ok: bool
    text: str  # what happened, in a line (the error when not ok)
    exit_status: int | None = None
    output: str = ""
    seconds: float = 0.0
    skipped: bool = False


class Redactor:
    """Removes the config's secrets and anything shaped like a token from recorded text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return _SECRET_SHAPES.sub(_hide, text)


def _hide(match: re.Match[str]) -> str:
    name, equals, _ = match.group(0).partition("=")
    return f"{name}=<redacted>" if equals else "<redacted>"


def fill(op: Op, values: MutableMapping[str, str]) -> tuple[str, str | None]:
    """The command line and stdin of `op` with run-time values in place."""
    line = op.detail
    if op.argv is not None:
        line = " ".join(
            shlex.quote(values[a.key].strip() if a.key else str(a))
            if isinstance(a, AtRun)
            else shlex.quote(a)
            for a in op.argv
        )
    stdin = op.stdin
    if isinstance(stdin, AtRun):
        stdin = values[stdin.key] if stdin.key else None
    return line, stdin


def resolved(op: Op, values: MutableMapping[str, str]) -> Op | None:
    """`op` as it will be sent, values filled in; None when it needs a value that no
    earlier operation read (nothing to put back)."""
    if op.needs is not None and op.needs not in values:
        return None
    if op.kind != "run":
        return op
    line, stdin = fill(op, values)
    return Op(op.where, "run", line, stdin=stdin, note=op.note, changes=op.changes)


class Actions:
    """Performs operations: commands over `ssh` on the config's nodes, checks over HTTP.
    `confirm(prompt)` asks a person; `notify(text)` and `record(check)` are the engine's."""

    def __init__(
        self,
        ssh: SshPool,
        targets: dict[str, SshTarget],
        *,
        redact: Callable[[str], str],
        confirm: Callable[[str], bool],
        notify: Callable[[str], str],
        record: Callable[[ops.Record, MutableMapping[str, str]], str],
        stop: threading.Event,
    ) -> None:
        self.ssh, self.targets, self.redact = ssh, targets, redact
        self.confirm, self.notify, self.record = confirm, notify, record
        self.stop = stop
        # A fresh connection per check: a balancer's reload closes idle kept-alive ones,
        # which would count as the service failing.
        self.http = httpx.Client(
            timeout=httpx.Timeout(10.0, connect=3.0),
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def perform(self, op: Op, values: MutableMapping[str, str], deadline: float) -> OpOutcome:
        start = time.monotonic()
        if op.kind == "run":
            outcome = self._command(op, values, deadline)
        else:
            outcome = self._check(op, values, deadline)
        outcome.seconds = time.monotonic() - start
        return outcome

    # --- commands --------------------------------------------------------------------------
    def _command(self, op: Op, values: MutableMapping[str, str], deadline: float) -> OpOutcome:
        line, stdin = fill(op, values)
        try:
            result = self.ssh.run(
                self.targets[op.where], line, timeout=deadline - time.monotonic(), stdin=stdin
            )
        except SshError as exc:
            return OpOutcome(False, f"{op.where}: {exc}")
        if op.saves is not None and result.ok:
            values.setdefault(op.saves, result.stdout)
        ok = result.ok or op.may_fail
        text = "ok" if result.ok else f"exit {result.exit_status}: {_last_line(result)}"
        return OpOutcome(ok, text, result.exit_status, self._excerpt(result, saved=op.saves))

    def _excerpt(self, result: CommandResult, *, saved: str | None) -> str:
        out = result.stdout if saved is None or not result.ok else ""
        text = (out + ("\n" if out and result.stderr else "") + result.stderr).strip()
        return self.redact(text[-EXCERPT:])

    # --- checks from this host ---------------------------------------------------------------
    def _check(self, op: Op, values: MutableMapping[str, str], deadline: float) -> OpOutcome:
        check = op.check
        if isinstance(check, ops.HttpWait):
            return self._http_wait(check, deadline)
        if isinstance(check, ops.HttpSoak):
            return self._http_soak(check, deadline)
        if isinstance(check, ops.FirstToken):
            return self._first_token(check, deadline)
        if isinstance(check, ops.Drained):
            return self._drained(check, deadline)
        if isinstance(check, ops.Confirm):
            approved = self.confirm(check.prompt)
            return OpOutcome(approved, "approved" if approved else "not approved")
        if isinstance(check, ops.Notify):
            return OpOutcome(True, self.notify(check.text))
        if isinstance(check, ops.Record):
            return OpOutcome(True, self.record(check, values))
        return OpOutcome(False, f"{op.kind} on {LOCAL}: nothing to perform")

    def _answer(self, method: str, url: str, status: int, body: str | None, limit: float) -> str:
        """'' when `url` answers as expected, else why not."""
        try:
            r = self.http.request(method, url, timeout=max(0.1, min(limit, 10.0)))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}".rstrip(": ")
        if r.status_code != status:
            return f"HTTP {r.status_code}"
        if body is not None and body not in r.text:
            return f"{body!r} not in the body"
        return ""

    def _http_wait(self, c: ops.HttpWait, deadline: float) -> OpOutcome:
        """Until `url` answers as expected, and keeps doing so for `settle` seconds."""
        end = min(deadline, time.monotonic() + c.within)
        tries, good_since = 0, None
        while True:
            tries += 1
            why = self._answer(c.method, c.url, c.status, c.body, end - time.monotonic())
            now = time.monotonic()
            good_since = (good_since or now) if not why else None
            if good_since is not None and now - good_since >= c.settle:
                return OpOutcome(True, f"{c.url} answered {c.status} (try {tries})")
            if now + c.interval >= end:
                return OpOutcome(
                    False, f"{c.url}: {why or 'did not stay answering'} after {tries} tries"
                )
            if self.stop.wait(c.interval):  # a wait of hours must not hold a shutdown
                return OpOutcome(False, f"{c.url}: stopped while waiting ({tries} tries)")

    def _http_soak(self, c: ops.HttpSoak, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + c.soak)
        expected = max(1, int(c.soak / c.interval))
        asked = failed = 0
        while True:
            asked += 1
            why = self._answer(c.method, c.url, c.status, c.body, c.interval)
            if why:
                failed += 1
                if failed > c.max_error_ratio * expected:  # can no longer end under the limit
                    return OpOutcome(
                        False,
                        f"{failed} of {asked} checks of {c.url} failed, above "
                        f"{c.max_error_ratio:.0%} of the soak's {expected}; last: {why}",
                    )
            if time.monotonic() + c.interval >= end:
                break
            if self.stop.wait(c.interval):
                return OpOutcome(False, f"{c.url}: stopped {asked} checks into the soak")
        text = f"{failed} of {asked} checks of {c.url} failed ({failed / asked:.0%})"
        return OpOutcome(failed / asked <= c.max_error_ratio, text)

    def _first_token(self, c: ops.FirstToken, deadline: float) -> OpOutcome:
        model = c.model
        try:
            if model is None:
                listed = self.http.get(f"{c.base}/v1/models").json()["data"]
                model = listed[0]["id"]
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 1,
                "stream": True,
            }
            limit = max(0.1, min(c.ttft, deadline - time.monotonic()))
            start = time.monotonic()
            timeout = httpx.Timeout(limit, connect=min(limit, 3.0))
            with self.http.stream(
                "POST", f"{c.base}/v1/chat/completions", json=body, timeout=timeout
            ) as r:
                if r.status_code != 200:
                    return OpOutcome(False, f"{c.base}: completion answered HTTP {r.status_code}")
                for line in r.iter_lines():
                    if time.monotonic() - start > c.ttft:
                        break
                    if _has_token(line):
                        took = time.monotonic() - start
                        return OpOutcome(True, f"first token from {model} in {took:.2f}s")
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            return OpOutcome(False, f"{c.base}: completion failed: {exc or type(exc).__name__}")
        return OpOutcome(False, f"{c.base}: no first token within {ops.seconds(c.ttft)}")

    def _drained(self, c: ops.Drained, deadline: float) -> OpOutcome:
        end = min(deadline, time.monotonic() + c.wait)
        # nginx's old workers route new requests for ~0.1 s after a reload returns.
        time.sleep(min(DRAIN_SETTLE, max(0.0, end - time.monotonic())))
        while True:
            try:
                r = self.http.get(f"{c.base}/metrics", timeout=1.0)
            except httpx.HTTPError:
                return OpOutcome(True, f"{c.base} does not answer: nothing left to wait for")
            busy = _busy(r.text) if r.status_code == 200 else None
            if busy == 0:
                return OpOutcome(True, f"{c.base}: no request running or waiting")
            if time.monotonic() + 0.2 >= end or self.stop.is_set():
                what = "reports no request gauge" if busy is None else f"still has {busy:g}"
                return OpOutcome(True, f"{c.base} {what} after {ops.seconds(c.wait)}: moved on")
            time.sleep(0.2)


def _has_token(line: str) -> bool:
    if not line.startswith("data:") or line.strip() == "data: [DONE]":
        return False
    try:
        choices = json.loads(line[5:]).get("choices") or []
    except ValueError:
        return False
    delta = choices[0].get("delta", {}) if choices else {}
    return bool(delta.get("content")) or bool(choices and choices[0].get("finish_reason"))


def _busy(exposition: str) -> float | None:
    """Requests running or waiting, summed over the engine gauges present; None if none."""
    total, seen = 0.0, False
    for line in exposition.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in BUSY_METRICS:
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (IndexError, ValueError):
                continue
    return total if seen else None


def _last_line(result: CommandResult) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1][:200] if lines else "no output"
