"""A bounded client load through a load balancer, as users would send it: chat completions,
every other one streamed, one after another on a kept-alive connection. What a rollback or
a switch must not fail (tests and bench/ use it).

A request fails when it gets no answer, an answer other than 200, or a stream cut before
`data: [DONE]`; a 500 from `bad_image` (the `x-image` header) is that build answering, not
a request the change failed, and is counted apart. The loop ends on `stop`, or after
`max_seconds` whatever happens.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from reliability.testing.inference import DEFAULT_MODEL


@dataclass
class Load:
    url: str
    bad_image: str | None = None
    model: str = DEFAULT_MODEL
    max_seconds: float = 120.0
    served: int = 0
    bad_answers: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def failed(self, response: httpx.Response, what: str) -> None:
        bad = self.bad_image is not None and response.headers.get("x-image") == self.bad_image
        if response.status_code == 500 and bad:
            self.bad_answers += 1
        else:
            self.failures.append(what)

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        }
        url = self.url.rstrip("/") + "/v1/chat/completions"
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                stream = self.served % 2 == 1
                try:
                    if stream:
                        with client.stream("POST", url, json={**body, "stream": True}) as r:
                            lines = [line for line in r.iter_lines() if line]
                        if r.status_code != 200 or lines[-1:] != ["data: [DONE]"]:
                            self.failed(r, f"stream {r.status_code} cut: {lines[-1:]}")
                    else:
                        r = client.post(url, json=body)
                        if r.status_code != 200:
                            self.failed(r, f"plain {r.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{'stream' if stream else 'plain'}: {exc!r}")
                self.served += 1
                time.sleep(0.01)

    def start(self) -> threading.Thread:
        """Run in a daemon thread; set `stop` and join it to end."""
        thread = threading.Thread(target=self.run, name="client-load", daemon=True)
        thread.start()
        return thread
