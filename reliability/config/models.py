"""The YAML configuration: pydantic models of every section, and a loader whose errors
name the file, the line, the field and the fix.

Parsed once, at start, strictly: unknown keys are errors and secrets never sit in the
file; a secret field is a pair `*_env` / `*_file` resolved by `Config.secret()`.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    model_validator,
)

from reliability import shipped
from reliability.config.capacity import CapacityTestConfig, CostConfig, Objectives
from reliability.config.container import ContainerSpec, old_container_form
from reliability.config.errors import ConfigError, Loc, format_loc, placed_message
from reliability.config.fields import Name, Strict
from reliability.config.fields import matching as _matching
from reliability.config.oncall import OnCallConfig
from reliability.config.rules import Rules
from reliability.durations import Duration, Interval, parse_duration

if TYPE_CHECKING:
    from reliability.db import PostgresLimits

DEFAULT_DATABASE_URL = "sqlite:///var/reliability.db"


def _no_credentials(value: str) -> str:
    """A config URL never carries `user:password@`: the file is read by many, logged and
    copied; credentials go in the environment or a file the field's `*_env`/`*_file` names."""
    if "@" in value.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(
            "the URL holds credentials (user:password@); remove them and give the secret "
            "by its `*_env` or `*_file` setting"
        )
    return value


HttpUrl = Annotated[
    str,
    _matching(r"https?://\S+", "write a URL starting with http:// or https://"),
    AfterValidator(_no_credentials),
]
AbsPath = Annotated[str, _matching(r"/\S*", "write an absolute path on the node")]
DEFAULT_HEALTH_PATH = "/health"  # what vLLM, SGLang and TGI answer 200 on while serving


def under(url: str, path: str) -> str:
    """`path` (from /) under `url`, which may end with a prefix of its own."""
    return url.rstrip("/") + path


KERNEL_LOG_PROGRAMS = ("journalctl", "dmesg")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_./=:@%+,-]+")


def kernel_log_program(words: tuple[str, ...] | list[str]) -> str:
    """Which of `KERNEL_LOG_PROGRAMS` a `kernel_log_command` runs (the collector adds its
    own options after it); ValueError saying what to write when it runs neither."""
    unsafe = [w for w in words if not _SAFE_WORD.fullmatch(w)]
    if unsafe:
        raise ValueError(
            f"{' '.join(words)!r}: write one plain command, no shell syntax ({unsafe[0]!r}); "
            "e.g. `sudo -n dmesg` or `sudo -n journalctl`"
        )
    programs = [w for w in words if w.rsplit("/", 1)[-1] in KERNEL_LOG_PROGRAMS]
    if not programs or words[-1] != programs[-1]:
        raise ValueError(
            f"{' '.join(words)!r}: end the command with dmesg or journalctl (the collector "
            "adds their options), e.g. `sudo -n dmesg`"
        )
    return programs[-1].rsplit("/", 1)[-1]


def _kernel_log_command(value: str) -> str:
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"{value!r}: {error}") from None
    if not words:
        raise ValueError("empty; leave the field out to try journalctl, then dmesg")
    kernel_log_program(words)
    return value


KernelLogCommand = Annotated[str, AfterValidator(_kernel_log_command)]


MAX_GPUS = 64  # per node; the largest boards today hold 8 or 16


def _no_inline_secret(value: Any) -> Any:
    if isinstance(value, str) and "://" in value and re.search(r"//[^/@]*:[^/@]+@", value):
        raise ValueError(
            "the URL holds a password; put the whole URL in the environment and name the "
            "variable with `url_env`, or in a file named by `url_file`"
        )
    return value


PositiveDuration = Annotated[Duration, Field(gt=0)]
Limit = Annotated[Duration, Field(ge=0)]


class DatabaseConfig(Strict):
    url: Annotated[str, BeforeValidator(_no_inline_secret)] | None = None
    url_env: str | None = Field(None, description="variable holding the URL (with password)")
    url_file: Path | None = None
    # PostgreSQL's limits on every connection; unset: db.PostgresLimits' defaults.
    connect_timeout: PositiveDuration | None = None
    statement_timeout: Limit | None = Field(None, description="0: no limit")
    lock_timeout: Limit | None = Field(None, description="0: no limit")
    idle_in_transaction_timeout: Limit | None = Field(None, description="0: no limit")
    keepalives_idle: PositiveDuration | None = None
    keepalives_interval: PositiveDuration | None = None
    keepalives_count: int | None = Field(None, ge=1, le=100)
    # SQLite in WAL mode: NORMAL syncs at checkpoints, not per commit (consistent, but a
    # power loss can drop the last commits); FULL syncs every commit (durable, slower).
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal", description="SQLite: normal (no fsync per commit) or full"
    )

    def limits(self) -> PostgresLimits:
        """The limits set here, the others at their defaults."""
        from reliability.db import PostgresLimits

        names = set(PostgresLimits.__dataclass_fields__)
        return PostgresLimits(**self.model_dump(include=names, exclude_none=True))

    @model_validator(mode="after")
    def _one_source(self) -> DatabaseConfig:
        if sum(x is not None for x in (self.url, self.url_env, self.url_file)) > 1:
            raise ValueError("give only one of `url`, `url_env`, `url_file`")
        return self


class HttpConfig(Strict):
    listen: Annotated[
        str,
        _matching(
            r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}", "write HOST:PORT, e.g. 127.0.0.1:9464"
        ),
    ] = "127.0.0.1:9464"
    webhook_token_env: str | None = None
    webhook_token_file: Path | None = None
    # The read API's bearer token (GET /api/v1/incidents, /api/v1/status), for the
    # daemon and the commands alike; required when `listen` is not loopback.
    api_token_env: str | None = None
    api_token_file: Path | None = None

    @model_validator(mode="after")
    def _one_token_source(self) -> HttpConfig:
        if self.api_token_env and self.api_token_file:
            raise ValueError("give only one of `api_token_env`, `api_token_file`")
        return self

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class SlackRoute(Strict):
    channel: str
    severity: list[Literal["critical", "warning", "info"]] = []
    services: list[str] = []


SlackId = Annotated[
    str,
    StringConstraints(pattern=r"^[UWS][A-Z0-9]{2,}$"),
    Field(description="a Slack user id (U..., W...) or user group id (S...)"),
]


class EscalationStep(Strict):
    """`after` an incident opened unacknowledged: a reply in its thread that mentions
    `oncall` (whoever `rotation` of `oncall.rotations` puts on call then, overrides
    included), a user or a user group id; none: no mention."""

    after: Duration = Field(..., description="e.g. 0, 5m, 15m")
    mention: Literal["oncall"] | SlackId | None = None
    rotation: Name | None = Field(
        None, description="the oncall.rotations entry `mention: oncall` asks (default: the first)"
    )


class EscalationPolicy(Strict):
    """The steps for one severity, in order of `after`; with `repeat`, the whole chain
    starts again that long after the previous start, until acknowledged."""

    steps: list[EscalationStep] = Field(..., min_length=1)
    repeat: Duration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> EscalationPolicy:
        afters = [step.after for step in self.steps]
        if afters != sorted(afters):
            raise ValueError("steps must be in the order of their `after`")
        if self.repeat is not None and self.repeat <= afters[-1]:
            raise ValueError("repeat must be longer than the last step's `after`")
        return self


class SlackConfig(Strict):
    token_env: str | None = None
    token_file: Path | None = None
    channel: str = Field(..., description="default channel, e.g. #oncall or a channel id")
    routes: list[SlackRoute] = []
    base_url: HttpUrl = "https://slack.com/api/"
    max_per_second: float = Field(1.0, gt=0)
    signing_secret_env: str | None = Field(
        None,
        description="the Slack app's signing secret: turns on the incident buttons, answered "
        "at POST /api/v1/slack/interactions",
    )
    app_token_env: str | None = Field(
        None,
        description="an app-level token (xapp-, scope connections:write): the incident "
        "buttons' clicks arrive over Socket Mode, no public URL needed",
    )
    responders: list[SlackId] = Field(
        [], description="Slack user or user group ids that may resolve from Slack"
    )
    runbook_users: list[SlackId] = Field(
        [], description="Slack user or user group ids that may run a runbook from Slack"
    )

    escalation: dict[Literal["critical", "warning", "info"], EscalationPolicy] = Field(
        {}, description="per severity: who is mentioned while an incident stays unacknowledged"
    )

    @property
    def interactive(self) -> bool:
        """Whether messages carry buttons: only where a transport can receive their clicks."""
        return self.signing_secret_env is not None or self.app_token_env is not None

    @model_validator(mode="after")
    def _token_source(self) -> SlackConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of `token_env` or `token_file` for the bot token")
        return self


class SshConfig(Strict):
    """SSH settings of a node; each field falls back to the top-level `ssh` defaults."""

    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key_file: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: Duration | None = None


NodeState = Literal["serving", "standby", "warm-standby", "out", "repair"]
"""What a node of the fleet does now (the fleet domain keeps it; runbooks change it):
`serving` a pool, a free `standby` (`warm-standby`: the known-good image already running and
checked), `out` (failed, or taken out by an operator) or in `repair`."""


class NodeConfig(Strict):
    name: Name
    address: str = Field(..., min_length=1)
    ssh: SshConfig = SshConfig()
    role: Literal["serving", "standby", "lb", "other"] = "serving"
    pool: Name | None = None
    gpus: int = Field(
        0, ge=0, le=MAX_GPUS, description="GPUs the node must have; fewer visible = GPU lost"
    )
    gpu_source: Literal["smi", "nvml", "none"] | None = None
    watch_paths: list[AbsPath] = ["/"]
    container: str | None = Field(
        None, description="the service container's name on this node, where it differs"
    )
    kernel_log_command: KernelLogCommand | None = Field(
        None, description="reads the kernel log (XIDs); default `collect.kernel_log_command`"
    )

    @property
    def first_state(self) -> NodeState | None:
        """The node's fleet state before any run or operator changed it; None for nodes
        outside the fleet (the balancer's, `other`)."""
        return (
            "serving" if self.role == "serving" else "standby" if self.role == "standby" else None
        )

    @property
    def gpu_backend(self) -> Literal["smi", "nvml", "none"]:
        if self.gpu_source is not None:
            return self.gpu_source
        return "smi" if self.gpus else "none"


class RouteConfig(Strict):
    """Where the service's public location sends its traffic (nginx; deploy/nginx/): `file`
    is the small include the location reads, and `hosted` and `local` the two variants
    prepared beside it on the balancer's node. A runbook copies one over `file`, checks
    and reloads nginx; nothing else in the config changes."""

    file: AbsPath = Field(..., description="the include the service's location reads")
    hosted: AbsPath = Field(..., description="variant: proxy to the hosted API (HTTPS)")
    local: AbsPath = Field(..., description="variant: proxy to the local pool's upstream")

    @model_validator(mode="after")
    def _three_files(self) -> RouteConfig:
        if len({self.file, self.hosted, self.local}) != 3:
            raise ValueError("file, hosted and local must be three different files")
        return self


class LoadBalancerConfig(Strict):
    kind: Literal["nginx", "haproxy"]
    node: Name
    upstream_file: AbsPath = Field(
        ..., description="the file holding the service's members, which runbooks rewrite"
    )
    config_file: AbsPath | None = Field(
        None,
        description="the main config (nginx: given with -c when set; haproxy: default "
        "/etc/haproxy/haproxy.cfg, loaded before upstream_file)",
    )
    pid_file: AbsPath | None = Field(
        None,
        description="haproxy only: the master's pid file (-p), signalled to reload; "
        "default /run/haproxy.pid",
    )
    url: HttpUrl = Field(..., description="where the service answers through the balancer")
    health_url: HttpUrl | None = Field(
        None,
        description="what a verify through the balancer asks; it must answer 200 while a "
        "member serves, so it is an engine path under url: the container's health_path "
        "(default) or /v1/models (the engine's / answers 404)",
    )

    route: RouteConfig | None = Field(
        None,
        description="nginx only: the include choosing hosted API or local pool, which the "
        "upstream-failover and upstream-switch-back runbooks swap (deploy/nginx/README.md)",
    )

    @model_validator(mode="after")
    def _health_url_default(self) -> LoadBalancerConfig:
        if self.health_url is None:
            # The engine's usual health path; a service with its own re-derives it.
            object.__setattr__(self, "health_url", under(self.url, DEFAULT_HEALTH_PATH))
        return self

    @model_validator(mode="after")
    def _pid_file_is_haproxys(self) -> LoadBalancerConfig:
        if self.pid_file is not None and self.kind != "haproxy":
            raise ValueError(
                f"pid_file is for haproxy; {self.kind} finds its pid through its config_file"
            )
        if self.config_file is not None and self.config_file == self.upstream_file:
            raise ValueError("config_file and upstream_file must be two files")
        if self.route is not None:
            if self.kind != "nginx":
                raise ValueError(
                    "route is for nginx (an include file per location); see deploy/nginx/"
                )
            taken = {self.upstream_file, self.config_file}
            clash = [
                f for f in (self.route.file, self.route.hosted, self.route.local) if f in taken
            ]
            if clash:
                raise ValueError(f"route uses {clash[0]}, already the upstream or config file")
        return self


class ServiceConfig(Strict):
    name: Name
    pools: list[Name] = Field(..., min_length=1)
    active_pool: Name
    port: int = Field(8000, ge=1, le=65535)
    model: str | None = None
    container: Annotated[ContainerSpec, BeforeValidator(old_container_form)] = ContainerSpec()
    image: str | None = None
    load_balancer: LoadBalancerConfig | None = None
    soak: Duration = Field(1800.0, description="healthy this long on a digest: known-good")
    auto_runbooks: list[str] = Field(
        default_factory=list,
        description="runbooks the daemon may run on its own for this service's incidents",
    )
    auto_cooldown: Duration = Field(
        900.0,
        description="at most one automatic run of a runbook on one target (its parameters, "
        "e.g. node=gpu-2) of the service in this time",
    )
    recovery_soak: Duration = Field(
        600.0,
        gt=0,
        description="after an upstream failover, the hosted API's completion probes stay "
        "under recovery_error_ratio this long before traffic goes back to it",
    )
    recovery_error_ratio: float = Field(
        0.05, ge=0, lt=1, description="share of failed completion probes the soak allows"
    )
    objectives: Objectives = Field(
        Objectives(), description="latency and errors a pool keeps to count as holding a load"
    )
    capacity: CapacityTestConfig = CapacityTestConfig()

    @model_validator(mode="before")
    @classmethod
    def _health_path_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "health_path" in data:
            raise ValueError(
                "`health_path` belongs to the container now: write it as "
                "`container: {health_path: ...}`"
            )
        return data

    @model_validator(mode="after")
    def _active_is_a_pool(self) -> ServiceConfig:
        if self.active_pool not in self.pools:
            raise ValueError(f"active_pool {self.active_pool!r} is not one of pools {self.pools}")
        return self

    @property
    def health_path(self) -> str:
        return self.container.health_path

    @property
    def container_name(self) -> str:
        return self.container.name or self.name

    @model_validator(mode="after")
    def _balancer_health_url(self) -> ServiceConfig:
        """A verify through the balancer asks `load_balancer.health_url`: it must reach a
        path the engine answers 200 on while serving (its `/` is a 404 on vLLM)."""
        lb = self.load_balancer
        if lb is None:
            return self
        paths = (self.health_path, "/v1/models")
        if "health_url" not in lb.model_fields_set:
            derived = under(lb.url, self.health_path)
            if lb.health_url != derived:
                object.__setattr__(
                    self, "load_balancer", lb.model_copy(update={"health_url": derived})
                )
        elif lb.health_url not in {under(lb.url, p) for p in paths}:
            raise ValueError(
                f"load_balancer.health_url {lb.health_url!r} is not a path the engine answers "
                f"through the balancer at {lb.url}: a verify needs 200 while a member serves; "
                f"write {under(lb.url, paths[0])} (the container's health_path) or "
                f"{under(lb.url, paths[1])}, or leave it out for the first"
            )
        return self


# A hosted API is probed every 3 s unless told otherwise: often enough for the built-in
# upstream-overloaded rule to start a failover within 20 s of it turning busy (the
# arithmetic is in detect/builtin.py), and under one probe per 2 s with the completion
# probe. A local endpoint: every 15 s. A timeout not given is 10 s, or 80% of a shorter
# interval (it must end before the next probe is due).
HOSTED_INTERVAL = 3.0
LOCAL_INTERVAL = 15.0
DEFAULT_TIMEOUT = 10.0


class EndpointConfig(Strict):
    name: Name
    url: HttpUrl
    kind: Literal["openai", "http"] = "openai"
    role: Literal["hosted", "local"] = "local"
    service: Name | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    interval: Interval = Field(
        LOCAL_INTERVAL, description=f"default {HOSTED_INTERVAL:g}s for a hosted endpoint"
    )
    timeout: Interval = Field(DEFAULT_TIMEOUT, description="default: 80% of a shorter interval")
    completion_interval: Duration = Field(60.0, description="0 turns the completion probe off")
    health_path: str = "/health"
    ca_file: Path | None = Field(
        None, description="https: trust this CA (PEM) instead of the system's; still verified"
    )

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "interval" not in data and data.get("role") == "hosted":
            data["interval"] = HOSTED_INTERVAL
        if "timeout" not in data:
            try:
                interval = parse_duration(data.get("interval", LOCAL_INTERVAL))
            except ValueError:
                return data  # reported at `interval`
            data["timeout"] = min(DEFAULT_TIMEOUT, round(interval * 0.8, 3))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> EndpointConfig:
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({self.timeout:g}s) must be below interval")
        if self.kind == "openai" and self.completion_interval and not self.model:
            raise ValueError("an openai endpoint with a completion probe needs `model`")
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file is for an https:// url; remove it or use https")
        return self


class CollectConfig(Strict):
    gpu_interval: Interval = 15.0
    node_interval: Interval = 15.0
    timeout: Interval = Field(10.0, description="deadline of one target's collection")
    workers: int = Field(16, ge=1, le=256, description="threads per collector job")
    kernel_log_command: KernelLogCommand | None = Field(
        None,
        description="reads nodes' kernel logs (XIDs), e.g. `sudo -n dmesg`; "
        "default: journalctl, else dmesg",
    )
    liveness_interval: Duration = Field(
        1.0,
        description="TCP connect to each node's sshd and serving port this often (a port "
        "that fails is tried again at once, every liveness_timeout); 0 turns it off",
    )
    liveness_timeout: Interval = Field(0.4, description="deadline of one TCP connect")

    @model_validator(mode="after")
    def _liveness_timeout_below_interval(self) -> CollectConfig:
        if self.liveness_interval and self.liveness_timeout >= self.liveness_interval:
            raise ValueError(
                f"liveness_timeout ({self.liveness_timeout:g}s) must be below "
                f"liveness_interval ({self.liveness_interval:g}s)"
            )
        return self


class ClusterConfig(Strict):
    """Several daemons on one PostgreSQL database (cluster/): who this one is, and how fast
    a member that stopped is taken for gone. SQLite is always one daemon."""

    member_id: Name | None = Field(
        None, description="this daemon's name among the members (default: HOST-PID)"
    )
    heartbeat: Interval = Field(2.0, description="how often a member writes its heartbeat")
    lease: Interval = Field(
        6.0, description="a member (and the leader) silent this long is gone; >= 3 heartbeats"
    )
    forget_after: Interval = Field(
        86400.0,
        description="a gone member is listed (`cluster status`) this long, then forgotten",
    )
    expected_members: int = Field(
        1,
        ge=1,
        le=64,
        description="daemons that should run on this database: fewer pages ReliabilityDaemonDown",
    )
    scrape_job: Annotated[
        str,
        _matching(r"[a-zA-Z_][a-zA-Z0-9_.-]*", "write the job_name of your prometheus.yml"),
    ] = Field("reliability", description="Prometheus' job scraping the daemons (their `up`)")

    @model_validator(mode="after")
    def _lease_spans_heartbeats(self) -> ClusterConfig:
        if self.lease < 3 * self.heartbeat:
            raise ValueError(
                f"lease ({self.lease:g}s) must be at least 3 heartbeats "
                f"({3 * self.heartbeat:g}s), or one slow heartbeat loses it"
            )
        if self.forget_after < self.lease:
            raise ValueError(
                f"forget_after ({self.forget_after:g}s) must be at least the lease "
                f"({self.lease:g}s): a member is forgotten only once it is gone"
            )
        return self


class IncidentsConfig(Strict):
    reopen_window: Duration = 600.0
    ack_timeout: Duration = 1800.0


class DashboardsConfig(Strict):
    src: Path = Field(
        Path("dashboards"), description="folder of *.dashboard.py sources, beside the config"
    )
    grafana_url: HttpUrl | None = None
    folder_uid: str = "reliability"
    token_env: str | None = None
    energy_price_per_kwh: float = Field(0.15, ge=0)


class Config(Strict):
    """The whole configuration file. `source` is the file it came from (None: defaults)."""

    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    slack: SlackConfig | None = None
    ssh: SshConfig = SshConfig()
    nodes: list[NodeConfig] = []
    services: list[ServiceConfig] = []
    endpoints: list[EndpointConfig] = []
    rules: Rules = Rules()
    collect: CollectConfig = CollectConfig()
    incidents: IncidentsConfig = IncidentsConfig()
    cluster: ClusterConfig = ClusterConfig()
    dashboards: DashboardsConfig = DashboardsConfig()
    oncall: OnCallConfig | None = None
    cost: CostConfig = CostConfig()
    runbooks_dir: Path = Path("runbooks")

    source: Path | None = Field(None, exclude=True)
    # Line of every key in the file, kept to place errors found after loading (secrets).
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)

    # --- derived views -------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return self.source.resolve().parent if self.source else Path.cwd()

    def path(self, p: Path | str) -> Path:
        """A path from the config, relative paths taken from the config file's folder."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def runbooks_path(self) -> Path:
        """`runbooks_dir`; when not set and absent beside the config, the shipped runbooks."""
        return self._folder(self.runbooks_dir, "runbooks_dir" in self.model_fields_set, "runbooks")

    def dashboards_path(self) -> Path:
        """`dashboards.src`; when not set and absent beside the config, the shipped sources."""
        explicit = "src" in self.dashboards.model_fields_set
        return self._folder(self.dashboards.src, explicit, "dashboards")

    def _folder(self, value: Path, explicit: bool, name: str) -> Path:
        path = self.path(value)
        return path if explicit or path.is_dir() else shipped.folder(name)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def pool_service(self, pool: str) -> ServiceConfig | None:
        """The service that lists `pool` (the config check keeps it to one)."""
        return next((s for s in self.services if pool in s.pools), None)

    def hosted_endpoints(self, service: str) -> list[EndpointConfig]:
        """The hosted APIs `service` may fall back from: the hosted endpoints naming it,
        else those naming no service (one is expected)."""
        hosted = [e for e in self.endpoints if e.role == "hosted"]
        return [e for e in hosted if e.service == service] or [e for e in hosted if not e.service]

    def kernel_log_command(self, node: NodeConfig) -> str | None:
        """The node's `kernel_log_command`, else the fleet's; None: journalctl, else dmesg."""
        return node.kernel_log_command or self.collect.kernel_log_command

    def node_ssh(self, node: NodeConfig) -> SshConfig:
        """The node's SSH settings with the top-level defaults filled in."""
        merged = {
            **self.ssh.model_dump(exclude_none=True),
            **node.ssh.model_dump(exclude_none=True),
        }
        merged.setdefault("port", 22)
        merged.setdefault("connect_timeout", 5.0)
        for key in ("key_file", "known_hosts"):
            if key in merged:
                merged[key] = self.path(merged[key])
        return SshConfig(**merged)

    def database_url(self) -> str:
        """The SQLAlchemy URL, secrets resolved; relative SQLite paths from the config's folder."""
        db = self.database
        if db.url_env or db.url_file:
            field = ("database", "url_env" if db.url_env else "url_file")
            url = self._read_secret(field, db.url_env, db.url_file)
            return url.get_secret_value()
        url = db.url or DEFAULT_DATABASE_URL
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            rest = url[len(prefix) :]
            if not rest.startswith("/"):
                return prefix + str(self.path(rest))
        return url

    def field_error(self, loc: Loc, problem: str) -> ConfigError:
        """A ConfigError about one field of this config, placed at its line."""
        if self.source is None:
            return ConfigError([f"(defaults): {format_loc(loc)}: {problem}"])
        return ConfigError([placed_message(str(self.source), self._lines, loc, problem)[1]])

    # --- secrets -------------------------------------------------------------------
    def _read_secret(
        self, field: tuple[str | int, ...], env: str | None, file: Path | None
    ) -> SecretStr:
        if env:
            value = os.environ.get(env)
            if not value:
                raise self.field_error(
                    field, f"environment variable {env} is not set; export it before starting"
                )
            return SecretStr(value)
        assert file is not None
        path = self.path(file)
        try:
            return SecretStr(path.read_text().strip())
        except OSError as exc:
            raise self.field_error(
                field, f"cannot read secret file {path}: {exc.strerror}"
            ) from None

    def slack_token(self) -> SecretStr:
        assert self.slack is not None
        s = self.slack
        field = ("slack", "token_env" if s.token_env else "token_file")
        return self._read_secret(field, s.token_env, s.token_file)

    def slack_signing_secret(self) -> SecretStr | None:
        """The secret Slack signs interaction requests with; None when none is configured."""
        env = self.slack.signing_secret_env if self.slack else None
        return self._read_secret(("slack", "signing_secret_env"), env, None) if env else None

    def slack_app_token(self) -> SecretStr | None:
        """The app-level token Socket Mode connects with; None when none is configured."""
        env = self.slack.app_token_env if self.slack else None
        return self._read_secret(("slack", "app_token_env"), env, None) if env else None

    def webhook_token(self) -> SecretStr | None:
        h = self.http
        if not (h.webhook_token_env or h.webhook_token_file):
            return None
        field = ("http", "webhook_token_env" if h.webhook_token_env else "webhook_token_file")
        return self._read_secret(field, h.webhook_token_env, h.webhook_token_file)

    def api_token(self) -> SecretStr | None:
        """The read API's bearer token; None when none is configured."""
        h = self.http
        if not (h.api_token_env or h.api_token_file):
            return None
        field = ("http", "api_token_env" if h.api_token_env else "api_token_file")
        return self._read_secret(field, h.api_token_env, h.api_token_file)

    def endpoint_key(self, index: int) -> SecretStr | None:
        e = self.endpoints[index]
        if not (e.api_key_env or e.api_key_file):
            return None
        field = ("endpoints", index, "api_key_env" if e.api_key_env else "api_key_file")
        return self._read_secret(field, e.api_key_env, e.api_key_file)

    def grafana_token(self) -> SecretStr | None:
        """The token `dashboards push` sends; None when `dashboards.token_env` names none."""
        env = self.dashboards.token_env
        return self._read_secret(("dashboards", "token_env"), env, None) if env else None

    def container_secrets(self, service: ServiceConfig) -> dict[str, str]:
        """The secret environment values of the service's container, read now (a deploy
        reads them as it sends them; they are never stored)."""
        index = self.services.index(service)
        values = {}
        for name, source in service.container.secrets().items():
            field = ("services", index, "container", "env", name)
            value = self._read_secret(field, source.value_env, source.value_file)
            values[name] = value.get_secret_value()
        return values

    def _secret_readers(self) -> list[Callable[[], Any]]:
        readers: list[Callable[[], Any]] = [self.webhook_token, self.api_token]
        readers += [
            lambda s=s: list(self.container_secrets(s).values())
            for s in self.services
            if s.container.secrets()
        ]
        readers += [lambda i=i: self.endpoint_key(i) for i in range(len(self.endpoints))]
        if self.slack:
            readers += [self.slack_token, self.slack_signing_secret, self.slack_app_token]
        if self.database.url_env or self.database.url_file:
            readers.append(self.database_url)
        return readers

    def secret_issues(self) -> list[str]:
        """Every secret the config names that cannot be read, and every file or folder
        the daemon would read that is not there, as error lines: found at start, not as a
        log line at every poll."""
        issues: list[str] = []
        for read in self._secret_readers():
            try:
                read()
            except ConfigError as exc:
                issues.extend(exc.lines)
        return issues + self._missing_files()

    def _missing_files(self) -> list[str]:
        wanted: list[tuple[Loc, Path, bool]] = []  # (field, path, is a folder)
        for where, ssh in [(("ssh",), self.ssh)] + [
            (("nodes", i, "ssh"), n.ssh) for i, n in enumerate(self.nodes)
        ]:
            wanted += [
                ((*where, key), self.path(path), False)
                for key, path in (("key_file", ssh.key_file), ("known_hosts", ssh.known_hosts))
                if path is not None
            ]
        if "runbooks_dir" in self.model_fields_set:
            wanted.append((("runbooks_dir",), self.path(self.runbooks_dir), True))
        issues = []
        for loc, path, folder in wanted:
            if folder and not path.is_dir():
                issues += self.field_error(
                    loc, f"{path} is not a folder; create it or fix the path"
                ).lines
            elif not folder and not os.access(path, os.R_OK):
                why = "cannot be read" if path.exists() else "does not exist"
                issues += self.field_error(loc, f"{path} {why}; create it or fix the path").lines
        return issues

    def secret_values(self) -> list[str]:
        """Every secret the config names that can be read: what recorded output must not
        show (runbook steps redact them)."""
        values: list[str] = []
        for read in [*self._secret_readers(), self.grafana_token]:
            try:
                value = read()
            except ConfigError:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list):
                values.extend(v for v in value if v)
            elif value:
                values.append(value)
        return values
