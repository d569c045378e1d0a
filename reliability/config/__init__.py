"""The YAML configuration (core: imports no domain).

`models.py` the pydantic models of every section, `rules.py` the rule models, `errors.py`
errors placed at their `FILE:LINE`, `load.py` the loader. The names below are what the
rest of the code imports; entry points load through `cli_support.load_config`, which adds
the domains' own checks.
"""

from reliability.config.container import ContainerSpec, SecretValue
from reliability.config.errors import ConfigError
from reliability.config.load import ConfigCheck, default_path, load
from reliability.config.models import (
    Config,
    DashboardsConfig,
    EndpointConfig,
    LoadBalancerConfig,
    Name,
    NodeConfig,
    NodeState,
    RouteConfig,
    ServiceConfig,
    SlackConfig,
    SlackRoute,
    Strict,
    kernel_log_program,
)
from reliability.config.oncall import OnCallConfig, RotationConfig

__all__ = [
    "Config",
    "ConfigCheck",
    "ConfigError",
    "ContainerSpec",
    "DashboardsConfig",
    "EndpointConfig",
    "LoadBalancerConfig",
    "Name",
    "NodeConfig",
    "NodeState",
    "OnCallConfig",
    "RotationConfig",
    "RouteConfig",
    "SecretValue",
    "ServiceConfig",
    "SlackConfig",
    "SlackRoute",
    "Strict",
    "default_path",
    "kernel_log_program",
    "load",
]
