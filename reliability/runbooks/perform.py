"""Performing one operation of a plan: a command over SSH on a node, or a check made from
the reliability host (the check's own `perform`, see checks.py and actions/), or an edit of
a file an earlier operation read (`Op.edit`, done here).

`Performer.perform(op, values, deadline)` runs one operation and returns its outcome; it
never raises for a failure of the system it looks at (that is an `OpOutcome` with `ok`
False), so the executor decides about retries and undo in one place. Values an operation
reads for later (`Op.saves`) go into `values`; operations that need them take them from
there, shell-quoted.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import httpx

from reliability.config import ConfigError
from reliability.runbooks.checks import OpOutcome
from reliability.runbooks.ops import LOCAL, AtRun, Op, SecretText
from reliability.ssh import CommandResult, SshError, SshPool, SshTarget

__all__ = ["OpOutcome", "Performer", "Redactor", "fill", "resolved"]

EXCERPT = 2000  # characters of a command's output kept in the record
# Text shaped like a credential, whatever the config knows, and what replaces it.
_SECRET_SHAPES = [
    (re.compile(r"xox[abposr]-[A-Za-z0-9-]+|sk-[A-Za-z0-9_-]{16,}"), "<redacted>"),
    # An Authorization header (its scheme too), a bare `Bearer xyz`.
    (
        re.compile(
            r"(?i)(authorization\s*[:=]\s*)(?:(?:bearer|basic|token|digest|negotiate)\s+)?"
            r"[^\s\"',]+"
        ),
        r"\1<redacted>",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 <redacted>"),
    # NAME=value, in a URL's query (`?token=...&`) or on a command line.
    (
        re.compile(
            r"(?i)((?:password|passwd|token|secret|api[_-]?key|access[_-]?key|signature)=)"
            r"[^\s&\"']+"
        ),
        r"\1<redacted>",
    ),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1<redacted>@"),  # user:password@host
]


class Redactor:
    """Removes the config's secrets and anything shaped like a credential (a token, an
    Authorization header, a URL's `?token=` or password) from text that leaves the engine:
    its records, progress notes, log lines and reasons."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        for shape, replacement in _SECRET_SHAPES:
            text = shape.sub(replacement, text)
        return text


def fill(op: Op, values: MutableMapping[str, str]) -> tuple[str, str | SecretText | None]:
    """The command line and stdin of `op` with run-time values in place (secrets still
    unread: the performer reads them as it sends)."""
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


class Performer:
    """Performs operations: commands over `ssh` on the config's nodes, checks from here.
    It is the checks' `RunContext`: `confirm(prompt, approval, deadline)`, `note(text)`,
    `record_deploy(...)`, `set_node_state(...)` and the capacity records are the
    executor's (it knows who runs it, the run and its incident)."""

    def __init__(
        self,
        ssh: SshPool,
        targets: dict[str, SshTarget],
        *,
        redact: Callable[[str], str],
        confirm: Callable[[str, str, float], OpOutcome],
        note: Callable[[str], OpOutcome],
        record_deploy: Callable[..., OpOutcome],
        set_node_state: Callable[..., OpOutcome],
        capacity_baseline: Callable[..., Any],
        record_capacity: Callable[[Any], None],
        stop: threading.Event,
    ) -> None:
        self.ssh, self.targets, self.redact = ssh, targets, redact
        self.confirm, self.note, self.record_deploy = confirm, note, record_deploy
        self.set_node_state = set_node_state
        self.capacity_baseline, self.record_capacity = capacity_baseline, record_capacity
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
        elif op.kind == "edit":
            outcome = _edit(op, values)
        elif op.check is not None:
            outcome = op.check.perform(self, deadline)
        else:
            outcome = OpOutcome(False, f"{op.kind} on {LOCAL}: nothing to perform")
        outcome.seconds = time.monotonic() - start
        return outcome

    def _command(self, op: Op, values: MutableMapping[str, str], deadline: float) -> OpOutcome:
        line, stdin = fill(op, values)
        if isinstance(stdin, SecretText):
            try:
                stdin = stdin.read()
            except (ConfigError, ValueError) as exc:
                return OpOutcome(False, f"{op.where}: not sent: {exc}")
        try:
            result = self.ssh.run(
                self.targets[op.where], line, timeout=deadline - time.monotonic(), stdin=stdin
            )
        except SshError as exc:
            return OpOutcome(False, f"{op.where}: {exc}")
        if op.saves is not None and result.ok:
            if op.latest:
                values[op.saves] = result.stdout
            else:
                values.setdefault(op.saves, result.stdout)
        ok = result.ok or op.may_fail
        text = "ok" if result.ok else f"exit {result.exit_status}: {_last_line(result)}"
        return OpOutcome(ok, text, result.exit_status, self._excerpt(result, saved=op.saves))

    def _excerpt(self, result: CommandResult, *, saved: str | None) -> str:
        out = result.stdout if saved is None or not result.ok else ""
        text = (out + ("\n" if out and result.stderr else "") + result.stderr).strip()
        return self.redact(text[-EXCERPT:])


def _edit(op: Op, values: MutableMapping[str, str]) -> OpOutcome:
    """Apply `op.edit` to the text saved under `op.needs`; the result under `op.saves`.
    A refusal fails the operation with its reason: the write after it never goes out."""
    assert op.edit is not None and op.needs is not None and op.saves is not None
    try:
        values[op.saves] = op.edit.apply(values[op.needs])
    except ValueError as exc:
        return OpOutcome(False, f"refused: {exc}")
    return OpOutcome(True, "edited")


def _last_line(result: CommandResult) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1][:200] if lines else "no output"
