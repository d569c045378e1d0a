"""What the Slack stand-in receives, shown in the demo's terminal and kept in a file.

`slack.log` holds one JSON object per message the daemon sent (posts, edits of a root
message, thread replies), in order, so a script or a test can read what on-call saw.
"""

from __future__ import annotations

import html
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from reliability.testing.slack import SlackCall, SlackStandIn

POLL_S = 0.3
_FIX = re.compile(r"\*Suggested fix\*\s*```(.+?)```", re.DOTALL)
_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")


def readable(text: str) -> str:
    """Slack's markup as a terminal shows it: dates and links by their text, no escapes."""
    return html.unescape(_LINK.sub(r"\2 (\1)", _DATE.sub(r"\1", text)))


def suggested_fix(blocks: list[dict[str, Any]] | None) -> str | None:
    """The `reliability runbook run ...` command a root message suggests, if any."""
    for block in blocks or ():
        text = (block.get("text") or {}).get("text", "") if isinstance(block, dict) else ""
        found = _FIX.search(text)
        if found:
            return html.unescape(found.group(1).strip())
    return None


def record(call: SlackCall) -> dict[str, Any]:
    """One line of slack.log: the text as Slack received it (escaped, with its markup)."""
    kind = "reply" if call.thread_ts else ("edit" if call.method == "chat.update" else "post")
    return {
        "at": datetime.fromtimestamp(call.received_at, UTC).isoformat(),
        "kind": kind,
        "channel": call.channel,
        "ts": call.ts,
        "thread_ts": call.thread_ts,
        "text": call.text or "",
        "suggested_fix": suggested_fix(call.blocks),
    }


class SlackEcho:
    """Polls the stand-in on a thread; `close()` writes what came last, then stops."""

    def __init__(self, slack: SlackStandIn, path: Path, console: Console, channel: str) -> None:
        self.slack, self.path, self.console, self.channel = slack, path, console, channel
        self._seen = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="demo-slack-echo", daemon=True)
        self._thread.start()

    def __enter__(self) -> SlackEcho:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            calls = self.slack.calls()
            fresh, self._seen = calls[self._seen :], len(calls)
            lines = [record(c) for c in fresh if c.ok and c.method.startswith("chat.")]
            if not lines:
                return
            with self.path.open("a", encoding="utf-8") as handle:
                for line in lines:
                    handle.write(json.dumps(line) + "\n")
        for line in lines:
            self._show(line)

    def _show(self, line: dict[str, Any]) -> None:
        where = {"post": "", "edit": " (message updated)", "reply": " (in thread)"}[line["kind"]]
        # Replies and edits name the channel by its id: show the name on-call knows.
        text = escape(readable(line["text"]))
        self.console.print(f"[magenta]slack {self.channel}{where}:[/] {text}")
        if line["suggested_fix"] and line["kind"] == "post":
            self.console.print(f"  [magenta]suggested fix:[/] {escape(line['suggested_fix'])}")
