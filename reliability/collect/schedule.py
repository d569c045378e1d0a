"""What the daemon collects, from the config: each collector kind is one function here that
builds its collectors for the configured fleet, and one entry in `SOURCES` (the endpoints'
probes come last, with the windows their ratios cover, which only the rules know).

Collectors themselves never read the config (their clients, targets and deadlines are
passed in, so a test builds one with a fake); this module is the one place that knows
which config section feeds which collector, at which interval, under which timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reliability import catalog
from reliability.collect.api import ApiProbeCollector, EndpointSpec
from reliability.collect.base import Collector
from reliability.collect.gpu_nvml import NvmlGpuCollector
from reliability.collect.gpu_smi import SmiGpuCollector
from reliability.collect.liveness import SERVING, SSH, LivenessSpec
from reliability.collect.node import NodeCollector, NodeSpec
from reliability.collect.route import RouteCollector, RouteSpec
from reliability.config import Config
from reliability.ssh import NodeShell, SshPool, target_for


@dataclass(frozen=True)
class Scheduled:
    """A collector as the daemon runs it: every `interval` seconds, each target within
    `timeout`; `targets` narrows it to some of its targets (None: all of them)."""

    collector: Collector
    interval: float
    timeout: float
    targets: Sequence[str] | None = None


Source = Callable[[Config, "SshPool | None"], list[Scheduled]]


def ssh_pool(config: Config) -> SshPool | None:
    """The SSH pool the node and remote GPU collectors share; None with no nodes."""
    if not config.nodes:
        return None
    cc = config.collect
    # A node that refused a connect is retried at most one cycle later.
    return SshPool(
        keepalive=min(15.0, cc.node_interval), backoff_max=min(cc.node_interval, cc.gpu_interval)
    )


def nodes(config: Config, pool: SshPool | None) -> list[Scheduled]:
    if pool is None:
        return []
    cc = config.collect
    specs = [
        NodeSpec(
            name=n.name,
            target=target_for(config, n),
            paths=tuple(n.watch_paths),
            container=n.container,
        )
        for n in config.nodes
    ]
    return [Scheduled(NodeCollector(pool, specs, timeout=cc.timeout), cc.node_interval, cc.timeout)]


def gpus_over_ssh(config: Config, pool: SshPool | None) -> list[Scheduled]:
    smi = {
        n.name: (NodeShell(pool, target_for(config, n)), n.gpus)
        for n in config.nodes
        if n.gpu_backend == "smi" and pool is not None
    }
    if not smi:
        return []
    cc = config.collect
    commands = {n.name: config.kernel_log_command(n) for n in config.nodes if n.name in smi}
    collector = SmiGpuCollector(smi, timeout=cc.timeout, kernel_log_commands=commands)
    return [Scheduled(collector, cc.gpu_interval, cc.timeout)]


def local_gpus(config: Config, pool: SshPool | None) -> list[Scheduled]:
    cc = config.collect
    return [
        Scheduled(
            NvmlGpuCollector(node=n.name, expected_gpus=n.gpus, timeout=cc.timeout),
            cc.gpu_interval,
            cc.timeout,
        )
        for n in config.nodes
        if n.gpu_backend == "nvml"
    ]


def endpoints(
    config: Config, ratio_windows: Sequence[float] = catalog.API_RATIO_WINDOWS
) -> list[Scheduled]:
    if not config.endpoints:
        return []
    specs = [
        EndpointSpec(
            name=e.name,
            base_url=e.url,
            kind=e.kind,
            api_key=(key.get_secret_value() if (key := config.endpoint_key(i)) else None),
            model=e.model,
            timeout=e.timeout,
            completion_every=_every(e.completion_interval, e.interval),
            health_path=e.health_path,
            ca_file=str(config.path(e.ca_file)) if e.ca_file else None,
        )
        for i, e in enumerate(config.endpoints)
    ]
    api = ApiProbeCollector(specs, ratio_windows=ratio_windows)
    scheduled = []
    # One job per distinct interval: each endpoint is probed on its own schedule.
    for interval in sorted({e.interval for e in config.endpoints}):
        mine = [e for e in config.endpoints if e.interval == interval]
        # The models probe and the completion probe run one after the other.
        timeout = max(
            e.timeout * (2 if e.kind == "openai" and e.completion_interval else 1) for e in mine
        )
        scheduled.append(Scheduled(api, interval, timeout, targets=[e.name for e in mine]))
    return scheduled


def routes(config: Config, pool: SshPool | None) -> list[Scheduled]:
    """The route file of each service that has one, read on its balancer's node."""
    specs = [
        RouteSpec(
            service=s.name,
            target=target_for(config, config.node(s.load_balancer.node)),
            file=s.load_balancer.route.file,
            hosted=s.load_balancer.route.hosted,
            local=s.load_balancer.route.local,
        )
        for s in config.services
        if s.load_balancer is not None and s.load_balancer.route is not None
    ]
    if pool is None or not specs:
        return []
    cc = config.collect
    return [
        Scheduled(RouteCollector(pool, specs, timeout=cc.timeout), cc.node_interval, cc.timeout)
    ]


def liveness(config: Config) -> list[LivenessSpec]:
    """What the liveness probe connects to: every node's sshd port, and the serving port of
    the service whose pool the node is in (a standby serves nothing until it takes over);
    empty when `collect.liveness_interval` is 0."""
    if not config.collect.liveness_interval:
        return []
    specs = []
    for n in config.nodes:
        ports = {SSH: config.node_ssh(n).port or 22}
        service = config.pool_service(n.pool) if n.pool else None
        if service is not None:
            ports[SERVING] = service.port
        specs.append(LivenessSpec(n.name, n.address, ports))
    return specs


def _every(slow: float, interval: float) -> int:
    """Run a slower probe on every Nth cycle of `interval`; 0 turns it off."""
    return max(1, round(slow / interval)) if slow else 0


SOURCES: tuple[Source, ...] = (nodes, gpus_over_ssh, local_gpus, routes)


def scheduled(
    config: Config,
    pool: SshPool | None,
    *,
    ratio_windows: Sequence[float] = catalog.API_RATIO_WINDOWS,
) -> list[Scheduled]:
    """Every collector the config asks for, in `SOURCES` order, then the endpoints' probes,
    whose ratios cover `ratio_windows` seconds (the daemon passes its rules' windows)."""
    jobs = [job for source in SOURCES for job in source(config, pool)]
    return jobs + endpoints(config, ratio_windows)
