"""Pytest fixtures of the rig; load with ``pytest_plugins = ["reliability.testing.fixtures"]``.

* ``rig_fleet`` (session): a 3-node SSH fleet, ``gpu-1``/``gpu-2`` in pool blue and
  ``gpu-3`` in pool green. Skipped locally, failed in CI, without sshd or root.
* ``rig`` (function): the same fleet, reset before and after the test (cuts restored,
  containers removed, node state back to defaults). Use this one unless a test needs a
  fleet of its own.
* ``rig_fleet_factory`` (function): ``rig_fleet_factory(["a", "b"], **Fleet kwargs)``
  for tests that change what cannot be reset (host keys) or need another size.
* ``rig_lb`` (function): a fleet of its own, ``gpu-1``/``gpu-2`` (pool blue) and
  ``gpu-3``/``gpu-4`` (pool green) each serving an inference stand-in in container ``vllm``
  on port 8000, ``spare-1`` (standby, no pool) and ``lb-1``, whose real nginx (an
  ``NginxBalancer``; ``rig_lb.fleet`` is the fleet) balances service ``chat`` over pool
  blue on ``rig_lb.url``. Skipped locally, failed in CI, without sshd, nginx or root.
* ``rig_haproxy`` (function): the same, with a real HAProxy (an ``HAProxyBalancer``) on
  ``lb-1`` instead of nginx. Skipped locally, failed in CI, without sshd, haproxy or root.
* ``rig_balancer`` (function, parametrized ``nginx`` / ``haproxy``): each of the two in
  turn, for specifications every balancer must meet.
* ``rig_hosted`` (function): the ``rig_lb`` fleet and nginx set up as deploy/nginx/ ships
  it, ``/v1/`` routed by a route file to the TLS hosted-API stand-in (a CA of its own,
  SNI, ``Host`` and API key checked) or, swapped, to pool blue; a ``HostedRig``.
* ``inference_group`` / ``inference_server`` (function): in-process inference stand-ins.
* ``slack`` (function): a Slack Web API stand-in with channels ``alerts`` and ``oncall``;
  drive it with ``WebClient(token=slack.token, base_url=slack.api_url)``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reliability.testing import tls
from reliability.testing.balancer import RigBalancer
from reliability.testing.fleet import Fleet, missing_requirement
from reliability.testing.haproxy import HAProxyBalancer
from reliability.testing.inference import InferenceSpec
from reliability.testing.inference_group import InferenceHandle, ServerGroup
from reliability.testing.nginx import HostedApi, NginxBalancer
from reliability.testing.services import service_missing
from reliability.testing.slack import SlackStandIn

RIG_POOLS = {"gpu-1": "blue", "gpu-2": "blue", "gpu-3": "green"}
RIG_LB_POOLS = {"gpu-1": "blue", "gpu-2": "blue", "gpu-3": "green", "gpu-4": "green"}
RIG_LB_NODES = [*RIG_LB_POOLS, "spare-1", "lb-1"]
RIG_LB_IMAGE = "vllm/vllm-openai:v0.6.0"
HOSTED_NAME = "localhost"  # the hosted stand-in's certificate name: one that resolves here


def _require_fleet() -> None:
    reason = missing_requirement()
    if reason:
        service_missing(reason)
    if os.geteuid() != 0:
        service_missing("the SSH fleet fixtures need root (login user, iptables)")


@pytest.fixture(scope="session")
def rig_fleet() -> Iterator[Fleet]:
    _require_fleet()
    with Fleet(list(RIG_POOLS), pools=RIG_POOLS) as fleet:
        yield fleet


@pytest.fixture
def rig(rig_fleet: Fleet) -> Iterator[Fleet]:
    rig_fleet.reset()
    yield rig_fleet
    rig_fleet.reset()


@pytest.fixture
def rig_fleet_factory() -> Iterator[Callable[..., Fleet]]:
    _require_fleet()
    fleets: list[Fleet] = []

    def make(names: list[str], **options: Any) -> Fleet:
        fleet = Fleet(names, **options).start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


RIG_BALANCERS: dict[str, type[RigBalancer]] = {"nginx": NginxBalancer, "haproxy": HAProxyBalancer}


@contextmanager
def _lb_fleet(kind: str, **options: Any) -> Iterator[Any]:
    # A fleet of its own (about 0.2 s to build): tests rewrite the upstream, stop members
    # and the balancer itself, none of which a reset could undo reliably.
    _require_fleet()
    reason = RIG_BALANCERS[kind].missing_requirement()
    if reason:
        service_missing(reason)
    with Fleet(RIG_LB_NODES, pools=RIG_LB_POOLS) as fleet:
        for name in RIG_LB_POOLS:
            fleet.run_container(name, RIG_LB_IMAGE)
        blue = [f"{fleet.node(n).address}:8000" for n, p in RIG_LB_POOLS.items() if p == "blue"]
        balancer = RIG_BALANCERS[kind](fleet, "lb-1", service="chat", members=blue, **options)
        with balancer:
            yield balancer


@pytest.fixture
def rig_lb() -> Iterator[NginxBalancer]:
    with _lb_fleet("nginx") as balancer:
        yield balancer


@pytest.fixture
def rig_haproxy() -> Iterator[HAProxyBalancer]:
    with _lb_fleet("haproxy") as balancer:
        yield balancer


@pytest.fixture(params=sorted(RIG_BALANCERS, reverse=True))  # nginx first
def rig_balancer(request: pytest.FixtureRequest) -> Iterator[RigBalancer]:
    with _lb_fleet(request.param) as balancer:
        yield balancer


@dataclass(frozen=True)
class HostedRig:
    """``rig_hosted``: nginx (``lb``) whose ``/v1/`` routes to the TLS hosted-API stand-in
    (``api``) or the blue pool, the CA it was issued by, and the key nginx sends."""

    lb: NginxBalancer
    api: InferenceHandle
    ca_file: Path
    api_key: str


@contextmanager
def hosted_rig(directory: Path, **options: Any) -> Iterator[HostedRig]:
    """The ``rig_hosted`` set-up in ``directory``; ``options`` go to the HostedApi (e.g.
    ``ca_file=None``) or, ``route``, to the balancer."""
    ca = tls.make_ca(directory / "ca")
    identity = tls.issue(ca, HOSTED_NAME)
    key = "sk-rig-" + secrets.token_hex(16)
    route = options.pop("route", "hosted")
    with ServerGroup() as group:
        api = group.start(InferenceSpec(pool="hosted", tls=identity, api_key=key))
        given = {"ca_file": ca.cert_file, **options}
        hosted = HostedApi(f"{api.host}:{api.port}", HOSTED_NAME, key, **given)
        with _lb_fleet("nginx", hosted=hosted, route=route) as lb:
            yield HostedRig(lb, api, ca.cert_file, key)


@pytest.fixture
def rig_hosted(tmp_path: Path) -> Iterator[HostedRig]:
    with hosted_rig(tmp_path) as rig:
        yield rig


@pytest.fixture
def inference_group() -> Iterator[ServerGroup]:
    with ServerGroup() as group:
        yield group


@pytest.fixture
def inference_server(inference_group: ServerGroup) -> InferenceHandle:
    """One stand-in on 127.0.0.1 (pool blue, the default image and model)."""
    return inference_group.start(InferenceSpec())


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    """A fresh Slack stand-in on 127.0.0.1; see reliability/testing/slack.py for controls."""
    with SlackStandIn() as stand_in:
        yield stand_in
