"""`upstream-recovered`: traffic goes back to the hosted API only after its completion
probes (never `/health` or the models list) have stayed under the service's error ratio
for its whole recovery soak, while the route file sent traffic to the local pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reliability import catalog
from reliability.collect.base import Sample
from reliability.config import Config
from reliability.detect.evaluator import Evaluator, Transition

START = 1_750_000_000.0
SOAK = 600.0
PROBE_EVERY = 60.0
STEP = 5.0


@dataclass
class Hosted:
    """The hosted API's probe counters as the api collector publishes them, and the route
    as the route collector reads it; `tick` sends a completion probe every minute."""

    route: str = "local"
    completions_fail: bool = False
    ok: float = 0.0
    failed: float = 0.0
    models_ok: float = 0.0
    probes: list[tuple[float, bool]] = field(default_factory=list)

    def probe(self, at: float) -> None:
        self.probes.append((at, not self.completions_fail))
        if self.completions_fail:
            self.failed += 1
        else:
            self.ok += 1
        self.models_ok += 1  # /v1/models answers whatever the completions do

    def samples(self) -> list[Sample]:
        out = [
            Sample(catalog.TARGET_UP, ("api", "hosted-api"), 1.0),
            Sample(catalog.TARGET_UP, ("route", "chat"), 1.0),
            Sample(catalog.API_PROBES, ("hosted-api", "completion", "ok"), self.ok),
            Sample(catalog.API_PROBES, ("hosted-api", "completion", "timeout"), self.failed),
            Sample(catalog.API_PROBES, ("hosted-api", "models", "ok"), self.models_ok),
        ]
        out += [
            Sample(catalog.SERVICE_ROUTE, ("chat", side), float(side == self.route))
            for side in ("hosted", "local", "other")
        ]
        return out


class Run:
    def __init__(self, hosted: Hosted, **service: Any) -> None:
        route = {
            "file": "/etc/nginx/reliability/chat-route.conf",
            "hosted": "/etc/nginx/reliability/chat-route-hosted.conf",
            "local": "/etc/nginx/reliability/chat-route-local.conf",
        }
        lb = {
            "kind": "nginx",
            "node": "gpu-3",
            "upstream_file": "/etc/nginx/reliability/chat-upstream.conf",
            "url": "http://10.0.0.9/",
            "route": route,
        }
        chat = {
            "name": "chat",
            "pools": ["blue", "green"],
            "active_pool": "blue",
            "load_balancer": lb,
            "recovery_soak": SOAK,
            **service,
        }
        hosted_api = {
            "name": "hosted-api",
            "url": "https://api.example.com/v1",
            "role": "hosted",
            "service": "chat",
            "model": "m",
        }
        nodes = [
            {"name": "gpu-1", "address": "10.0.0.1", "pool": "blue"},
            {"name": "gpu-2", "address": "10.0.0.2", "pool": "green"},
            {"name": "gpu-3", "address": "10.0.0.9", "role": "lb"},
        ]
        config = {"nodes": nodes, "services": [chat], "endpoints": [hosted_api]}
        self.evaluator = Evaluator(Config.model_validate(config))
        self.hosted = hosted
        self.now = START
        self.next_probe = START

    def until(self, seconds: float) -> list[tuple[float, Transition]]:
        """Cycles every 5 s up to `seconds` after the start: (when, transition) of the
        upstream-recovered ones."""
        out = []
        while self.now - START <= seconds:
            if self.now >= self.next_probe:
                self.hosted.probe(self.now)
                self.next_probe += PROBE_EVERY
            for t in self.evaluator.evaluate(self.hosted.samples(), self.now):
                if t.rule == "upstream-recovered":
                    out.append((self.now - START, t))
            self.now += STEP
        return out


def test_it_fires_once_the_completions_stayed_good_for_the_whole_soak_and_not_before():
    run = Run(Hosted())

    assert run.until(SOAK - STEP) == []
    ((at, t),) = run.until(SOAK + 60)

    assert at == SOAK
    assert t.kind == "firing" and t.severity == "info"
    assert t.title == "chat: hosted API hosted-api recovered; traffic can go back to it"
    assert "failed 0% over the last 10m (at most 5% allowed)" in t.summary
    assert t.runbook == "reliability runbook run upstream-switch-back --param service=chat"
    assert t.runbook_request is not None and t.runbook_request.params == {"service": "chat"}


def test_failures_above_the_ratio_hold_it_until_they_leave_the_window():
    hosted = Hosted()
    run = Run(hosted)
    run.until(SOAK / 2 - STEP)
    hosted.completions_fail = True  # the probes at 300 s and 360 s fail: 2 of 10
    run.until(SOAK / 2 + PROBE_EVERY)
    hosted.completions_fail = False

    assert run.until(955) == []  # 1 failure of 10 in the window is still above 5%
    ((at, t),) = run.until(1100)
    assert at == 960  # the window no longer holds the probe at 360 s
    assert t.kind == "firing"


def test_a_ratio_the_service_allows_is_not_a_reason_to_wait():
    hosted = Hosted()
    run = Run(hosted, recovery_error_ratio=0.2)
    run.until(SOAK / 2 - STEP)
    hosted.completions_fail = True
    run.until(SOAK / 2 + PROBE_EVERY)
    hosted.completions_fail = False

    ((at, _),) = run.until(SOAK + 60)
    assert at == SOAK  # 2 of 10 failed: within 20%


def test_health_and_the_models_list_alone_never_bring_traffic_back():
    hosted = Hosted(completions_fail=True)  # /v1/models answers, completions do not
    assert Run(hosted).until(3 * SOAK) == []


def test_the_soak_counts_only_while_the_route_reads_local():
    hosted = Hosted(route="hosted")
    run = Run(hosted)
    assert run.until(SOAK + 300) == []  # good probes, but traffic is on the hosted API
    hosted.route = "local"
    started = run.now - START

    assert run.until(started + SOAK - STEP) == []
    ((at, _),) = run.until(started + SOAK + 60)
    assert at == started + SOAK


def test_a_route_edited_by_hand_restarts_the_soak():
    hosted = Hosted()
    run = Run(hosted)
    run.until(SOAK - 100)
    hosted.route = "other"  # neither variant: nobody can say where traffic goes
    run.until(SOAK - 50)
    hosted.route = "local"
    restarted = run.now - START

    assert run.until(SOAK + 60) == []
    ((at, _),) = run.until(restarted + SOAK + 60)
    assert at == restarted + SOAK


def test_once_traffic_is_back_on_the_hosted_api_the_incident_resolves():
    hosted = Hosted()
    run = Run(hosted)
    ((_, fired),) = run.until(SOAK)
    hosted.route = "hosted"  # upstream-switch-back swapped the route file
    back = run.now - START

    ((at, t),) = run.until(back + 120)
    assert t.kind == "resolved" and t.fingerprint == fired.fingerprint
    assert at == back + 60  # the rule's resolve_after


def test_too_few_completion_probes_in_the_soak_are_no_evidence():
    hosted = Hosted()
    run = Run(hosted)
    run.next_probe = START + 10 * SOAK  # one probe at the start, then none (unreachable)
    hosted.probe(START)
    assert run.until(2 * SOAK) == []
