"""Upstream failover and switch-back with traffic flowing: real nginx set up as
deploy/nginx/ ships it, in front of the TLS hosted-API stand-in (a CA of its own, SNI,
`Host` and API key checked) and the blue pool, and the shipped runbooks over real sshd.
Every request of a bounded client load records which side answered it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from reliability import catalog
from reliability.cli_support import load_config
from reliability.collect.base import CollectError
from reliability.collect.schedule import routes
from reliability.config import Config
from reliability.runbooks.models import RunStatus
from reliability.ssh import SshPool
from reliability.testing import tls
from reliability.testing.fixtures import HostedRig, hosted_rig
from reliability.testing.inference import DEFAULT_MODEL
from reliability.testing.nginx import NginxError
from reliability.testing.rigconfig import rig_config, run_runbook
from reliability.testing.waiting import wait_for

LOAD_SECONDS_MAX = 120.0  # every client loop below ends by this, whatever happens
BODY = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def write_config(rig: HostedRig, directory: Path) -> Config:
    """The rig as a reliability config: service chat on pool blue behind the rig's nginx,
    its route, and the hosted API as an endpoint trusted through the rig's CA."""
    key = directory / "hosted-key"
    key.write_text(rig.api_key)
    key.chmod(0o600)
    hosted = {
        "name": "hosted",
        "url": rig.api.url,
        "role": "hosted",
        "service": "chat",
        "model": DEFAULT_MODEL,
        "api_key_file": str(key),
        "ca_file": str(rig.ca_file),
    }
    service = {"model": DEFAULT_MODEL}
    return load_config(rig_config(rig.lb, directory, service=service, endpoints=[hosted]))


@dataclass
class Answer:
    started: float
    side: str | None  # x-pool of the answer: "hosted", or the pool that served it
    failure: str | None
    # A kept-alive connection the balancer's old worker closed as the request went out:
    # no byte of an answer came back (an HTTP/1.1 race every client retries).
    unanswered: bool = False


@dataclass
class Load:
    """A bounded client load through nginx's /v1/: plain and streamed completions, each
    recorded with when it started and who answered."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.answers.append(self._one(client, stream=len(self.answers) % 2 == 1))
                time.sleep(0.01)

    def _one(self, client: httpx.Client, *, stream: bool) -> Answer:
        started = time.monotonic()
        url = self.url + "v1/chat/completions"
        try:
            if stream:
                with client.stream("POST", url, json={**BODY, "stream": True}) as r:
                    lines = [line for line in r.iter_lines() if line]
                ok = r.status_code == 200 and lines[-1:] == ["data: [DONE]"]
                why = None if ok else f"stream {r.status_code}: {lines[-1:]}"
            else:
                r = client.post(url, json=BODY)
                why = None if r.status_code == 200 else f"plain {r.status_code}"
            return Answer(started, r.headers.get("x-pool"), why)
        except httpx.HTTPError as exc:
            unanswered = "without sending a response" in str(exc)
            return Answer(started, None, repr(exc), unanswered)

    def since(self, moment: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.started >= moment]

    def wait(self, count: int, within: float = 30.0) -> None:
        """Until `count` requests have been answered (or failed); bounded."""
        wait_for(f"{count} answers", lambda: len(self.answers) >= count, within)


@pytest.fixture
def load_through() -> Iterator[Callable[[str], Load]]:
    loads: list[tuple[Load, threading.Thread]] = []

    def start(url: str) -> Load:
        load = Load(url)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        loads.append((load, thread))
        return load

    yield start
    for running, thread in loads:
        running.stop.set()
        thread.join(15)


def test_failover_moves_traffic_from_the_tls_hosted_api_to_the_pool_and_switch_back_returns_it(
    rig_hosted: HostedRig, tmp_path: Path, load_through: Callable[[str], Load]
) -> None:
    rig = rig_hosted
    config = write_config(rig, tmp_path)
    load = load_through(rig.lb.url)
    load.wait(10)
    assert {a.side for a in load.answers} == {"hosted"}  # through nginx, TLS, key and all
    assert not [a.failure for a in load.answers if a.failure]

    rig.api.set_mode("overloaded")
    failover = run_runbook(config, "upstream-failover", service="chat")
    switched = time.monotonic()
    load.wait(len(load.answers) + 20)

    assert failover.status == RunStatus.succeeded, failover.reason
    assert rig.lb.route_file.read_bytes() == rig.lb.route_variant("local").read_bytes()
    after = load.since(switched)
    assert len(after) > 10
    assert [a.failure for a in after if a.failure] == []
    assert {a.side for a in after} == {"blue"}

    rig.api.set_mode("ok")
    back_from = time.monotonic()
    back = run_runbook(config, "upstream-switch-back", service="chat")
    returned = time.monotonic()
    load.wait(len(load.answers) + 20)
    load.stop.set()

    assert back.status == RunStatus.succeeded, back.reason
    assert rig.lb.route_file.read_bytes() == rig.lb.route_variant("hosted").read_bytes()
    # Both sides healthy: during the switch-back no request is answered with an error and
    # no stream is cut (only a request racing an old worker's close of its idle kept-alive
    # connection may see no answer at all); after it, not one fails.
    during = load.since(back_from)
    assert [a.failure for a in during if a.failure and not a.unanswered] == []
    after = load.since(returned)
    assert len(after) > 10
    assert [a.failure for a in after if a.failure] == []
    assert {a.side for a in after} == {"hosted"}


def test_a_switch_back_to_a_hosted_api_still_failing_leaves_traffic_on_the_pool(
    rig_hosted: HostedRig, tmp_path: Path
) -> None:
    rig = rig_hosted
    config = write_config(rig, tmp_path)
    rig.api.set_mode("overloaded")
    assert run_runbook(config, "upstream-failover", service="chat").status == RunStatus.succeeded
    local = rig.lb.route_file.read_bytes()

    result = run_runbook(config, "upstream-switch-back", service="chat")

    assert result.status == RunStatus.failed
    assert "step to-hosted failed" in (result.reason or "")
    assert rig.lb.route_file.read_bytes() == local  # the failover stands, byte for byte
    time.sleep(rig.lb.balancer.settle)  # the undo's reload: old workers stop accepting
    answer = httpx.post(rig.lb.url + "v1/chat/completions", json=BODY, timeout=10)
    assert (answer.status_code, answer.headers["x-pool"]) == (200, "blue")


def test_nginx_refuses_to_start_when_the_hosted_route_names_no_trusted_ca(tmp_path: Path) -> None:
    refused = "no proxy_ssl_trusted_certificate for proxy_ssl_verify"
    with pytest.raises(NginxError, match=refused), hosted_rig(tmp_path, ca_file=None):
        pass


def test_a_hosted_api_whose_certificate_another_ca_issued_is_never_reached(tmp_path: Path) -> None:
    other = tls.make_ca(tmp_path / "other", name="not the hosted API's CA")
    with hosted_rig(tmp_path, ca_file=other.cert_file) as rig:
        answer = httpx.post(rig.lb.url + "v1/chat/completions", json=BODY, timeout=10)
        log = rig.lb.log()
        served = rig.api.stats()["requests"]

    assert answer.status_code == 502
    assert "upstream SSL certificate verify error" in log
    assert served == 0


def test_the_daemon_reads_where_traffic_goes_from_the_route_file_on_the_balancer(
    rig_hosted: HostedRig, tmp_path: Path
) -> None:
    rig = rig_hosted
    config = write_config(rig, tmp_path)
    pool = SshPool()
    try:
        ((scheduled),) = routes(config, pool)
        route = scheduled.collector

        def side() -> str:
            samples = route.collect("chat")
            (on,) = [s.labels[1] for s in samples if s.metric == catalog.SERVICE_ROUTE and s.value]
            return on

        assert route.targets() == ["chat"]
        assert side() == "hosted"
        rig.api.set_mode("overloaded")
        assert (
            run_runbook(config, "upstream-failover", service="chat").status == RunStatus.succeeded
        )
        assert side() == "local"
        rig.lb.ssh(f"echo '# edited by hand' >> {rig.lb.route_file}")
        assert side() == "other"
        rig.lb.ssh(f"rm {rig.lb.route_file}")
        with pytest.raises(CollectError, match=f"cannot read {rig.lb.route_file}"):
            route.collect("chat")
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("proxy_ssl_server_name on;", 502),  # no SNI: the handshake is refused
        ("proxy_set_header Host localhost;", 421),  # Host: chat_hosted is not the API's name
        ("-auth.conf;", 401),  # the include with the key
    ],
)
def test_each_line_of_the_hosted_route_is_one_a_hosted_api_needs(
    rig_hosted: HostedRig, line: str, status: int
) -> None:
    rig = rig_hosted
    assert httpx.post(rig.lb.url + "v1/chat/completions", json=BODY, timeout=10).status_code == 200
    text = rig.lb.route_file.read_text()
    rig.lb.route_file.write_text(
        "".join(x for x in text.splitlines(True) if not x.endswith(line + "\n"))
    )
    assert rig.lb.route_file.read_text() != text
    rig.lb.reload()

    answer = httpx.post(rig.lb.url + "v1/chat/completions", json=BODY, timeout=10)

    assert answer.status_code == status
