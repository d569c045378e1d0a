"""The load generator: Locust as a library, stepping its users up against a pool's
OpenAI-compatible endpoints and measuring each step with Locust's own statistics.

Run only as its own process: importing Locust patches the whole interpreter with gevent,
which the daemon, the CLI and pytest must never get. ``python -m reliability.capacity.load``
reads a `Plan` (JSON) on stdin and writes JSON lines on stdout: ``{"progress": ...}``
about twice a second, ``{"step": ...}`` when a step ends, ``{"done": ...}`` last.

Each user sends chat completions one after the other (a closed loop, no think time) to one
of the pool's nodes (users spread over the nodes in turn), a share of them streamed. A step
runs its users for its time: they are spawned at the spawn rate, Locust's statistics are
reset once they all run, and what follows is measured: requests/s, completion tokens/s,
the time to a whole answer (the request's time in Locust's statistics), the time to the
first streamed token (a second entry, ``TTFT``), failures (a status other than 2xx, an
answer without its end, a timeout).
The generator's own CPU time per step is reported too: a step where it was busy most of
the time measured the generator, not the pool.
"""

from __future__ import annotations

import itertools
import json
import random
import resource
import sys
import time
from dataclasses import asdict
from typing import Any

import gevent
from locust import FastHttpUser, constant, task
from locust.env import Environment

from reliability.capacity.plan import Plan, StepResult, missed

CHAT_PATH = "/v1/chat/completions"
PROGRESS_EVERY_S = 0.5
SPAWN_SHARE = 0.5  # spawning may take at most this share of a step


class _Tally:
    """Tokens of the answers of the current step (Locust counts requests, not tokens)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prompt = 0
        self.completion = 0
        self.last_done = 0.0  # when the last answer of the step completed (monotonic)


def _user_class(plan: Plan, tally: _Tally) -> type[FastHttpUser]:
    urls = itertools.cycle(plan.urls)
    rng = random.Random(plan.seed)
    prompt = " ".join(["word"] * plan.prompt_words)

    class ChatUser(FastHttpUser):
        host = plan.urls[0]
        wait_time = constant(0)
        network_timeout = plan.request_timeout
        connection_timeout = plan.request_timeout
        insecure = False

        def _body(self, stream: bool) -> dict[str, Any]:
            body: dict[str, Any] = {
                "model": plan.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": plan.max_tokens,
            }
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            return body

        def on_start(self) -> None:
            # Each user keeps to one node, as a client keeps its connection: the nodes
            # share the users evenly, whatever the order their answers come in.
            self.chat_url = next(urls) + CHAT_PATH

        @task
        def chat(self) -> None:
            stream = rng.random() < plan.stream_share
            url = self.chat_url
            began = time.perf_counter()
            with self.client.post(
                url, json=self._body(stream), name="chat", stream=stream, catch_response=True
            ) as response:
                if response.status_code // 100 != 2:
                    response.failure(f"HTTP {response.status_code}")
                    return
                try:
                    usage = self._streamed(response, began) if stream else response.json()["usage"]
                except (ValueError, KeyError, TypeError, OSError) as error:
                    response.failure(f"bad answer: {error}")
                    return
                if usage is None:
                    response.failure("the stream ended without its last chunk")
                    return
                # The request's time in Locust's statistics: the whole answer.
                response.request_meta["response_time"] = (time.perf_counter() - began) * 1000
                tally.last_done = time.monotonic()
                tally.prompt += int(usage.get("prompt_tokens", 0))
                tally.completion += int(usage.get("completion_tokens", 0))
                response.success()

        def _streamed(self, response: Any, began: float) -> dict[str, Any] | None:
            """Read an SSE answer; fire its time to first token; its usage, None when it
            never said [DONE]."""
            usage, first, done = None, False, False
            # Line by line from the socket (geventhttpclient's reader): iter_content waits
            # for whole chunks, which would put the first token at the end of the answer.
            # Read to the end of the body, so the connection goes back to the pool.
            reader = response._response
            while line := reader.readline(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: ") :].strip()
                if data == b"[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                usage = event.get("usage") or usage
                delta = (event.get("choices") or [{}])[0].get("delta", {})
                if not first and delta.get("content"):
                    first = True
                    self.environment.events.request.fire(
                        request_type="TTFT",
                        name="chat",
                        response_time=(time.perf_counter() - began) * 1000,
                        response_length=0,
                        exception=None,
                        context={},
                    )
            return (usage or {}) if done else None

    return ChatUser


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 4)


def _measure(
    env: Environment, plan: Plan, tally: _Tally, users: int, began: float, cpu: float
) -> StepResult:
    """The step's figures. Requests/s count the answers completed from the step's start to
    the last of them: users that started together finish together, and a window's end that
    falls before their next answers must not count as time without answers."""
    chat = env.stats.get("chat", "POST")
    ttft = env.stats.get("chat", "TTFT")
    done = chat.num_requests - chat.num_failures
    total = chat.num_requests
    seconds = max(tally.last_done - began, 0.0)
    result = StepResult(
        users=users,
        seconds=round(seconds, 3),
        requests=total,
        failures=chat.num_failures,
        qps=round(done / seconds, 3) if seconds else 0.0,
        tokens_per_s=round(tally.completion / seconds, 3) if seconds else 0.0,
        prompt_tokens=round(tally.prompt / done, 2) if done else 0.0,
        completion_tokens=round(tally.completion / done, 2) if done else 0.0,
        ttft_p50_s=_seconds(ttft.get_response_time_percentile(0.5) if ttft.num_requests else None),
        ttft_p95_s=_seconds(ttft.get_response_time_percentile(0.95) if ttft.num_requests else None),
        e2e_p50_s=_seconds(chat.get_response_time_percentile(0.5) if done else None),
        e2e_p95_s=_seconds(chat.get_response_time_percentile(0.95) if done else None),
        error_ratio=round(chat.num_failures / total, 4) if total else 1.0,
        generator_cpu=round(cpu / (time.monotonic() - began), 3),
    )
    result.missed = missed(plan, result)
    return result


def _emit(kind: str, data: Any) -> None:
    sys.stdout.write(json.dumps({kind: data}) + "\n")
    sys.stdout.flush()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(plan: Plan) -> list[StepResult]:
    """Every step of `plan` (the last one missing an objective ends it when asked)."""
    tally = _Tally()
    env = Environment(user_classes=[_user_class(plan, tally)], host=plan.urls[0])
    runner = env.create_local_runner()
    results: list[StepResult] = []
    running = 0
    try:
        for index, users in enumerate(plan.steps):
            began = time.monotonic()
            runner.start(users, spawn_rate=plan.spawn_rate)
            spawn_s = min(abs(users - running) / plan.spawn_rate, plan.step_s * SPAWN_SHARE)
            gevent.sleep(spawn_s)
            running = users
            env.stats.reset_all()
            tally.reset()
            measured_from, cpu_from = time.monotonic(), _cpu()
            end = began + plan.step_s
            while (now := time.monotonic()) < end:
                chat = env.stats.get("chat", "POST")
                _emit(
                    "progress",
                    {
                        "step": index,
                        "users": runner.user_count,
                        "elapsed_s": round(now - measured_from, 2),
                        "requests": chat.num_requests,
                        "failures": chat.num_failures,
                    },
                )
                gevent.sleep(min(PROGRESS_EVERY_S, end - now))
            step = _measure(env, plan, tally, users, measured_from, _cpu() - cpu_from)
            results.append(step)
            _emit("step", asdict(step))
            if step.missed and plan.stop_when_missed:
                break
    finally:
        runner.quit()
    return results


def main() -> int:
    plan = Plan(**json.loads(sys.stdin.read()))
    steps = run(plan)
    _emit("done", {"steps": len(steps)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
