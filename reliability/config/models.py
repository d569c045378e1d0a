"""The YAML configuration: pydantic models of every section, and a loader whose errors
name the file, the line, the field and the fix.

Parsed once, at start, strictly: unknown keys are errors and secrets never sit in the
file; a secret field is a pair `*_env` / `*_file` resolved by `Config.secret()`.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from reliability.config.errors import ConfigError, Loc, format_loc, placed_message
from reliability.config.rules import Rules
from reliability.durations import Duration

DEFAULT_DATABASE_URL = "sqlite:///var/reliability.db"


def _matching(pattern: str, hint: str) -> AfterValidator:
    """A string check whose error tells the user what to write, not the regular expression."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r}: {hint}")
        return value

    return AfterValidator(check)


Name = Annotated[
    str, _matching(r"[a-z0-9][a-z0-9._-]{0,62}", "use lowercase letters, digits, '.', '_', '-'")
]
HttpUrl = Annotated[
    str, _matching(r"https?://\S+", "write a URL starting with http:// or https://")
]
AbsPath = Annotated[str, _matching(r"/\S*", "write an absolute path on the node")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _no_inline_secret(value: Any) -> Any:
    if isinstance(value, str) and "://" in value and re.search(r"//[^/@]*:[^/@]+@", value):
        raise ValueError(
            "the URL holds a password; put the whole URL in the environment and name the "
            "variable with `url_env`, or in a file named by `url_file`"
        )
    return value


class DatabaseConfig(Strict):
    url: Annotated[str, BeforeValidator(_no_inline_secret)] | None = None
    url_env: str | None = Field(None, description="variable holding the URL (with password)")
    url_file: Path | None = None

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


class SlackConfig(Strict):
    token_env: str | None = None
    token_file: Path | None = None
    channel: str = Field(..., description="default channel, e.g. #oncall or a channel id")
    routes: list[SlackRoute] = []
    base_url: str = "https://slack.com/api/"
    max_per_second: float = Field(1.0, gt=0)

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


class NodeConfig(Strict):
    name: Name
    address: str = Field(..., min_length=1)
    ssh: SshConfig = SshConfig()
    role: Literal["serving", "standby", "lb", "other"] = "serving"
    pool: Name | None = None
    gpus: int = Field(0, ge=0, description="GPUs the node must have; fewer visible = GPU lost")
    gpu_source: Literal["smi", "nvml", "none"] | None = None
    watch_paths: list[AbsPath] = ["/"]
    container: str | None = None

    @property
    def gpu_backend(self) -> Literal["smi", "nvml", "none"]:
        if self.gpu_source is not None:
            return self.gpu_source
        return "smi" if self.gpus else "none"


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
    url: HttpUrl

    @model_validator(mode="after")
    def _pid_file_is_haproxys(self) -> LoadBalancerConfig:
        if self.pid_file is not None and self.kind != "haproxy":
            raise ValueError(
                f"pid_file is for haproxy; {self.kind} finds its pid through its config_file"
            )
        if self.config_file is not None and self.config_file == self.upstream_file:
            raise ValueError("config_file and upstream_file must be two files")
        return self


class ServiceConfig(Strict):
    name: Name
    pools: list[Name] = Field(..., min_length=1)
    active_pool: Name
    port: int = Field(8000, ge=1, le=65535)
    model: str | None = None
    container: str | None = None
    image: str | None = None
    health_path: str = "/health"
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

    @model_validator(mode="after")
    def _active_is_a_pool(self) -> ServiceConfig:
        if self.active_pool not in self.pools:
            raise ValueError(f"active_pool {self.active_pool!r} is not one of pools {self.pools}")
        return self


class EndpointConfig(Strict):
    name: Name
    url: HttpUrl
    kind: Literal["openai", "http"] = "openai"
    role: Literal["hosted", "local"] = "local"
    service: Name | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    interval: Duration = 15.0
    timeout: Duration = 10.0
    completion_interval: Duration = Field(60.0, description="0 turns the completion probe off")
    health_path: str = "/health"

    @model_validator(mode="after")
    def _consistent(self) -> EndpointConfig:
        if self.timeout >= self.interval:
            raise ValueError(f"timeout ({self.timeout:g}s) must be below interval")
        if self.kind == "openai" and self.completion_interval and not self.model:
            raise ValueError("an openai endpoint with a completion probe needs `model`")
        return self


class CollectConfig(Strict):
    gpu_interval: Duration = 15.0
    node_interval: Duration = 15.0
    timeout: Duration = Field(10.0, description="deadline of one target's collection")
    workers: int = Field(16, ge=1, le=256, description="threads per collector job")


class IncidentsConfig(Strict):
    reopen_window: Duration = 600.0
    ack_timeout: Duration = 1800.0


class DashboardsConfig(Strict):
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
    dashboards: DashboardsConfig = DashboardsConfig()
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

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

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

    def webhook_token(self) -> SecretStr | None:
        h = self.http
        if not (h.webhook_token_env or h.webhook_token_file):
            return None
        field = ("http", "webhook_token_env" if h.webhook_token_env else "webhook_token_file")
        return self._read_secret(field, h.webhook_token_env, h.webhook_token_file)

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

    def _secret_readers(self) -> list[Callable[[], Any]]:
        readers: list[Callable[[], Any]] = [self.webhook_token]
        readers += [lambda i=i: self.endpoint_key(i) for i in range(len(self.endpoints))]
        if self.slack:
            readers.append(self.slack_token)
        if self.database.url_env or self.database.url_file:
            readers.append(self.database_url)
        return readers

    def secret_issues(self) -> list[str]:
        """Every secret the config names that cannot be read, as error lines."""
        issues: list[str] = []
        for read in self._secret_readers():
            try:
                read()
            except ConfigError as exc:
                issues.extend(exc.lines)
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
            if value:
                values.append(value)
        return values
