"""The demo's config file and runbooks, written from where its pieces listen.

The config is an ordinary reliability config (it passes `config check`), commented where
the demo departs from what production would use: rules that fire and resolve within
seconds instead of minutes, runbooks whose soaks are seconds, an automatic cooldown of
seconds. Secrets (the Slack token, the webhook token) sit in files beside it, mode 600.
"""

from __future__ import annotations

import secrets
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reliability import shipped
from reliability.config.rules import (
    CounterIncreaseRule,
    ErrorRatioRule,
    ReachabilityRule,
    TargetDownRule,
)
from reliability.detect import builtin
from reliability.detect.rules import AnyRule
from reliability.durations import format_duration
from reliability.testing.inference import DEFAULT_MODEL

SERVICE = "chat"
POOLS = ("blue", "green")
ACTIVE_POOL = "blue"
CONTAINER = "vllm"
CHANNEL = "#oncall"
GPUS = 8
# The fleet: three serving nodes in two pools, a standby, and the load balancer's node.
NODE_POOLS = {"gpu-1": "blue", "gpu-2": "blue", "gpu-3": "green"}
STANDBY = "spare-1"
LB_NODE = "lb-1"
NODES = (*NODE_POOLS, STANDBY, LB_NODE)
AUTO_RUNBOOKS = ("node-failover", "upstream-failover", "upstream-switch-back")
RECOVERY_SOAK = "30s"  # hosted completions good this long, then traffic goes back
AUTO_COOLDOWN = "0s"
SHIPPED_RUNBOOKS = shipped.folder("runbooks")

# Runbook waits shortened for the demo (file -> (as shipped, in the demo)). Only waits
# that a healthy run sits through: timeouts and `within` limits stay as shipped.
SHORTENED: dict[str, tuple[tuple[str, str], ...]] = {
    "blue-green.yaml": (("soak: 5m", "soak: 10s"), ("interval: 2s", "interval: 1s")),
    "node-failover.yaml": (("wait: 15s", "wait: 5s"),),
}


@dataclass(frozen=True)
class Layout:
    """Where the demo's pieces are: what its config is written from."""

    ssh: dict[str, Any]  # the `ssh` section (user, key, known_hosts)
    nodes: list[dict[str, Any]]  # name, address, ssh port, pool, gpus of every node
    hosted_url: str  # https, a name its certificate holds
    hosted_key: str  # the hosted API's key (nginx sends it; the probes too)
    hosted_ca: Path  # the CA that issued the hosted API's certificate
    load_balancer: dict[str, Any]  # the service's `load_balancer` section (with its route)
    nginx_runs: bool  # False: the balancer is in the config only, switches are planned
    image: str  # the known-good image, pinned by digest
    slack_token: str
    slack_api_url: str
    node_urls: dict[str, str] = field(default_factory=dict)  # serving node -> its stand-in


class DemoSetupError(RuntimeError):
    """The demo cannot be set up from this checkout (its runbooks changed or are missing)."""


def role_of(node: str) -> str:
    if node == STANDBY:
        return "standby"
    return "lb" if node == LB_NODE else "serving"


# --- rules -----------------------------------------------------------------------------------


def demo_rules() -> list[tuple[AnyRule, str]]:
    """Built-in rules with shorter times (same names, so they replace the built-ins), each
    with the comment saying what changed."""
    nd, uo, lp = builtin.NODE_DOWN, builtin.UPSTREAM_OVERLOADED, builtin.LOCAL_POOL_ERRORS
    ur = builtin.UPSTREAM_RECOVERED
    xid, gsd = builtin.GPU_XID_CRITICAL, builtin.GPU_SOURCE_DOWN
    assert isinstance(nd, ReachabilityRule) and isinstance(xid, CounterIncreaseRule)
    assert isinstance(gsd, TargetDownRule)
    assert isinstance(uo, ErrorRatioRule) and isinstance(lp, ErrorRatioRule)
    return [
        (
            nd.model_copy(update={"resolve_after": 5.0}),
            "fires as the built-in does (about 2s after the node stops answering); resolves "
            "5s after it answers (built-in: 60s)",
        ),
        (
            gsd.model_copy(update={"resolve_after": 2.0}),
            "resolves 2s after nvidia-smi answers (built-in: 60s): before node-down does, so "
            "a node back from a cut does not raise it once node-down stops inhibiting it",
        ),
        (
            uo.model_copy(update={"resolve_after": 10.0}),
            "fires as the built-in does (within 20s of the hosted API turning busy); "
            "resolves after 10s below (built-in: 120s)",
        ),
        (
            ur.model_copy(update={"resolve_after": 5.0}),
            f"resolves 5s after traffic is back on the hosted API (built-in: 60s); fires "
            f"after the service's recovery_soak, {RECOVERY_SOAK} here",
        ),
        (
            lp.model_copy(update={"for_": 10.0, "resolve_after": 10.0}),
            "fires 10s after failed probes pass 20% of the last minute (built-in: 60s); "
            "resolves after 10s below (120s)",
        ),
        (
            xid.model_copy(update={"window": 60.0, "resolve_after": 10.0}),
            "an XID counts for 1m (built-in: 30m), so its incident resolves a minute later",
        ),
        (
            builtin.GPU_TEMPERATURE_SLOWDOWN.model_copy(
                update={"for_": 5.0, "resolve_after": 10.0}
            ),
            "at each GPU's own slowdown temperature (nvidia-smi's T.Limit margin); fires after "
            "5s (built-in: 60s), resolves after 10s (5m)",
        ),
    ]


def _rule_yaml(rule: AnyRule) -> dict[str, Any]:
    data = rule.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for key in ("for", "resolve_after", "window"):
        if isinstance(data.get(key), int | float):
            data[key] = format_duration(float(data[key]))
    # `type` first, as a person writes a rule.
    return {"name": data.pop("name"), "type": data.pop("type"), **data}


# --- files -----------------------------------------------------------------------------------


def write_secret(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return name


def write_runbooks(directory: Path, source: Path = SHIPPED_RUNBOOKS) -> Path:
    """Copy the shipped runbooks into `directory`/runbooks with the demo's short waits."""
    target = directory / "runbooks"
    target.mkdir(parents=True, exist_ok=True)
    books = sorted(source.glob("*.yaml"))
    if not books:
        raise DemoSetupError(f"no runbooks in {source}: run the demo from a checkout")
    for book in books:
        text = book.read_text()
        changes = SHORTENED.get(book.name, ())
        for old, new in changes:
            if text.count(old) != 1:
                raise DemoSetupError(
                    f"{book}: expected one `{old}` to shorten for the demo; update "
                    "reliability/demo/config.py SHORTENED to match the runbook"
                )
            text = text.replace(old, new)
        said = ", ".join(f"{old} -> {new}" for old, new in changes) or "none"
        head = f"# Copied by `reliability demo` from runbooks/{book.name}; shortened: {said}\n"
        (target / book.name).write_text(head + text)
    return target


def _section(comment: str, data: dict[str, Any]) -> str:
    lines = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    return "\n" + lines + yaml.safe_dump(data, sort_keys=False, width=100)


def _endpoint(name: str, url: str, role: str) -> dict[str, Any]:
    endpoint = {"name": name, "url": url, "role": role, "service": SERVICE, "model": DEFAULT_MODEL}
    if role == "hosted":
        # Probed at its default interval (3s) as in production, for the built-in
        # upstream-overloaded; a completion every 9s (production: 60s), so the switch
        # back sees its 3 good completions within the demo's recovery soak, and the API
        # still gets under one probe per 2s.
        return endpoint | {"completion_interval": "9s"}
    return endpoint | {"interval": "2s", "timeout": "1500ms", "completion_interval": "4s"}


def write_config(directory: Path, layout: Layout, listen: str) -> Path:
    """The demo's config file (rewritten at every start); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    nodes = []
    for node in layout.nodes:
        entry = {**node, "role": role_of(node["name"])}
        if entry["role"] == "serving":
            entry["container"] = CONTAINER
        nodes.append(entry)
    # Each serving node probed on its own: /v1/ through nginx goes where the route says,
    # the hosted API or the pool, so it measures neither alone.
    endpoints = [_endpoint(n, url, "local") for n, url in layout.node_urls.items()]
    if layout.nginx_runs:
        lb_comment = (
            "nginx runs on lb-1 as deploy/nginx/ ships it: /v1/ goes where the route file\n"
            "says, the hosted API (TLS, its name, the key from a mode-600 include) or the\n"
            "active pool; the runbooks swap the route file and edit the upstream file's\n"
            "server lines (its weights, comments and other upstream stay)."
        )
        auto = list(AUTO_RUNBOOKS)
    else:
        lb_comment = (
            "nginx is not installed here: this balancer is in the config only, so that\n"
            "`reliability runbook plan` shows what a switch would do. A `runbook run` of a\n"
            "switch fails at `nginx -t` and undoes itself; nothing runs on its own."
        )
        auto = []
    hosted = {
        **_endpoint("hosted", layout.hosted_url, "hosted"),
        "api_key_file": write_secret(directory, "hosted-api-key", layout.hosted_key),
        "ca_file": str(layout.hosted_ca),
    }
    endpoints.insert(0, hosted)
    service = {
        "name": SERVICE,
        "pools": list(POOLS),
        "active_pool": ACTIVE_POOL,
        "port": 8000,
        "model": DEFAULT_MODEL,
        "image": layout.image,
        "container": {"name": CONTAINER, "args": ["--model", DEFAULT_MODEL]},
        "load_balancer": layout.load_balancer,
        "auto_runbooks": auto,
        "auto_cooldown": AUTO_COOLDOWN,
        "recovery_soak": RECOVERY_SOAK,
    }
    rules = demo_rules()
    rule_notes = "\n".join(
        textwrap.fill(f"{rule.name}: {note}", 86, initial_indent="  ", subsequent_indent="    ")
        for rule, note in rules
    )
    text = (
        "# Written by `reliability demo`; rewritten at every start. An ordinary config:\n"
        "# `reliability config check -c` this file. Where the demo departs from what a\n"
        "# real fleet would use, a comment says so.\n"
        + _section(
            "SQLite beside this file, started afresh by every demo.",
            {"database": {"url": "sqlite:///reliability.db"}},
        )
        + _section(
            "/metrics, /healthz, /readyz and the Alertmanager webhook, on loopback.",
            {
                "http": {
                    "listen": listen,
                    "webhook_token_file": write_secret(
                        directory, "webhook-token", secrets.token_urlsafe(24)
                    ),
                }
            },
        )
        + _section(
            "The Slack stand-in (reliability/testing/slack.py) on loopback, driven by the\n"
            "real slack_sdk client; the demo prints what it receives and keeps it in slack.log.",
            {
                "slack": {
                    "token_file": write_secret(directory, "slack-token", layout.slack_token),
                    "channel": CHANNEL,
                    "base_url": layout.slack_api_url,
                }
            },
        )
        + _section(
            "Every node is an SSH server of the demo process (paramiko) on its own loopback\n"
            "address; host keys are checked against this known_hosts, strictly.",
            {"ssh": layout.ssh},
        )
        + _section(
            f"Three serving nodes in pools blue and green, a standby, the balancer's node;\n"
            f"{GPUS} simulated H100s per GPU node (nvidia-smi and dmesg stand-ins).",
            {"nodes": nodes},
        )
        + _section(
            f"{lb_comment}\n"
            "load_balancer.health_url is what a verify asks: it must answer 200 while a member\n"
            "serves, so it is the engine's /health through nginx (the engine's / is a 404).\n"
            "Demo: the daemon runs node-failover, upstream-failover and upstream-switch-back\n"
            "on its own with no cooldown, so each injected fault gets its runbook\n"
            "(production: 15m between automatic runs); traffic goes back to the hosted API\n"
            f"after {RECOVERY_SOAK} of good completions (production: 10m or more). The\n"
            "image, pinned by digest, is the known-good one.",
            {"services": [service]},
        )
        + _section(
            "Local endpoints probed every 2s (production: 15s). The hosted API as in\n"
            "production: every 3s (its default), which the built-in upstream-overloaded\n"
            "rule turns into a failover within 20s of it answering busy; its stand-in\n"
            "serves TLS with a certificate of the demo's own CA, trusted here by ca_file.",
            {"endpoints": endpoints},
        )
        + _section(
            "Built-in rules replaced by shorter ones of the same name, for a demo that\n"
            "answers in seconds:\n" + rule_notes,
            {"rules": {"builtin": True, "custom": [_rule_yaml(r) for r, _ in rules]}},
        )
        + _section(
            "Collection every 2-3s (production: 15s).",
            {
                "collect": {"node_interval": "2s", "gpu_interval": "3s", "timeout": "1500ms"},
                "runbooks_dir": "runbooks",
            },
        )
    )
    path = directory / "reliability.yaml"
    path.write_text(text)
    return path
