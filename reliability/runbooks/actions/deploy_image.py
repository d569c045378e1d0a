"""`deploy_image`: replace the service's container on each node of a target group with an
image pinned by digest (or the registry's known-good one), then wait until it is ready.

The new container is the service's whole spec (`services[].container`: args, environment,
volumes, ports, GPUs, IPC, shared memory, ulimits, labels), so a replacement serves the
same model the same way. The replacement is reversible: the running container is renamed
aside and stopped, not removed; the new one is created and started; undo removes the new
one and starts the old one again (same container id, same image); the old one is removed
only once the whole run has succeeded (`Unit.cleanup`).

Secret environment values never appear in a command line: they go to `docker create
--env-file` through a file written from the SSH session's standard input (mode 0600,
removed as soon as docker has read it), so the plan, the database and the logs show only
where each value comes from. With `unless_warm` the step is skipped on warm standbys (the
fleet's `warm-standby`), which already run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from reliability.config import Config, ConfigError, NodeConfig, ServiceConfig, Strict
from reliability.durations import Duration
from reliability.runbooks.actions.base import (
    Action,
    ImageTemplate,
    NameTemplate,
    NodeStep,
    undo_commands,
)
from reliability.runbooks.actions.ready import ready_ops
from reliability.runbooks.checks import FirstToken, HttpWait, OpOutcome, RunContext
from reliability.runbooks.ops import LOCAL, Arg, AtRun, Op, SecretText, Unit, run_op

if TYPE_CHECKING:
    from reliability.runbooks.plan import Planner
    from reliability.runbooks.scope import Scope

# Reads the env file docker is given from the SSH session's stdin, runs `docker create`
# with the words after it, and removes the file whatever happened ($1... are the words).
_WITH_ENV_FILE = (
    'f=$(mktemp) || exit 125; cat > "$f" && docker create --env-file "$f" "$@"; '
    's=$?; rm -f -- "$f"; exit $s'
)


# Retries and a resumed run perform a unit again, so the two steps that move the running
# container are safe to repeat: put aside only what still has the name (then stop it),
# and bring back under its name only what lost it (then start it). $1... are the words.
_PUT_ASIDE = (
    'if [ "$(docker inspect --type container --format "{{.Id}}" "$1" 2>/dev/null)" = "$2" ]; '
    'then docker rename "$1" "$3" || exit; fi; docker stop "$2"'
)
_BRING_BACK = (
    'if [ "$(docker inspect --type container --format "{{.Name}}" "$1")" != "/$2" ]; '
    'then docker rename "$1" "$2" || exit; fi; docker start "$1"'
)


class DeployImageArgs(Strict):
    service: NameTemplate
    image: ImageTemplate = Field(..., description="REF@sha256:…, or known-good")
    pool: NameTemplate | None = Field(None, description="pool label of the new container")
    verify: bool = Field(True, description="wait until the node is ready before the next batch")
    ttft: Duration = 10.0
    within: Duration = 300.0
    unless_warm: bool = Field(
        False,
        description="skip when the group's nodes are warm standbys: the known-good image "
        "already runs there, checked",
    )


class DeployImageStep(NodeStep):
    action: Literal["deploy_image"]
    args: DeployImageArgs
    changes_state: ClassVar[bool] = True


def container_name(node: NodeConfig, service: ServiceConfig) -> str:
    return node.container or service.container_name


def create_words(
    node: NodeConfig, service: ServiceConfig, pool: str | None, image: Arg
) -> list[Arg]:
    """`docker create`'s options, image and arguments from the service's container spec
    (secrets excepted: they go by --env-file)."""
    spec = service.container
    words: list[Arg] = ["--name", container_name(node, service), "--restart", spec.restart]
    gpus = spec.gpus or ("all" if node.gpus else None)
    if gpus:
        words += ["--gpus", gpus]
    if spec.ipc:
        words += ["--ipc", spec.ipc]
    if spec.shm_size:
        words += ["--shm-size", spec.shm_size]
    for name, limit in spec.ulimits.items():
        words += ["--ulimit", f"{name}={limit}"]
    for port in spec.ports or [f"{service.port}:{service.port}"]:
        words += ["-p", port]
    for volume in spec.volumes:
        words += ["-v", volume]
    for name, value in spec.plain_env().items():
        words += ["-e", f"{name}={value}"]
    labels = {**spec.labels, "reliability.service": service.name}
    if pool:
        labels["pool"] = pool
    for key, value in labels.items():
        words += ["-l", f"{key}={value}"]
    if spec.command:
        words += ["--entrypoint", spec.command[0]]
    return [*words, image, *spec.command[1:], *spec.args]


def _env_file(config: Config, service: ServiceConfig) -> str:
    """The secret values as docker's --env-file reads them: NAME=VALUE, one a line."""
    values = config.container_secrets(service)
    for name, value in values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"the secret value of {name} has a line break; --env-file cannot")
    return "".join(f"{name}={value}\n" for name, value in values.items())


@dataclass(frozen=True, slots=True)
class SecretsReadable:
    """The container's secrets can be read here, before anything on the node changes (a
    secret that cannot be read would otherwise stop the run after the old container)."""

    names: str
    read: Callable[[], str] = field(compare=False, repr=False)

    def perform(self, run: RunContext, deadline: float) -> OpOutcome:
        try:
            self.read()
        except (ConfigError, ValueError) as exc:
            return OpOutcome(False, f"secret not readable: {exc}")
        return OpOutcome(True, f"{self.names}: readable")


def secrets_op(config: Config, service: ServiceConfig) -> list[Op]:
    """The check that the container's secrets can be read, when it has any."""
    names = ", ".join(service.container.secrets())
    if not names:
        return []
    read = SecretsReadable(names, partial(_env_file, config, service))
    return [Op(LOCAL, "check", f"the secrets {names} can be read here", check=read)]


def create_op(
    config: Config,
    node: NodeConfig,
    service: ServiceConfig,
    pool: str | None,
    image: Arg,
    *,
    saves: str,
) -> Op:
    """`docker create` of the service's container (its id saved under `saves`); with
    secrets, through the env-file wrapper, the values read only as it is sent."""
    words = create_words(node, service, pool, image)
    secrets = service.container.secrets()
    if not secrets:
        return run_op(
            node.name,
            ["docker", "create", *words],
            note="docker run's first half",
            saves=saves,
            changes=True,
        )
    argv: list[Arg] = ["sh", "-c", _WITH_ENV_FILE, "sh", *words]
    shown = "\n".join(f"{name}=<secret from {s.shown()}>" for name, s in secrets.items())
    op = run_op(
        node.name,
        argv,
        note="docker run's first half; secrets by --env-file from stdin (0600, removed after)",
        saves=saves,
        changes=True,
    )
    return replace(op, stdin=SecretText(shown, partial(_env_file, config, service)))


def keys(step_id: str, node: str) -> tuple[str, str, str]:
    """Where a run keeps, for step `step_id` on `node`: the replaced container's id, the
    name it was put aside under, the new container's id."""
    return (f"old@{step_id}@{node}", f"aside@{step_id}@{node}", f"new@{step_id}@{node}")


def replace_ops(
    config: Config,
    node: NodeConfig,
    service: ServiceConfig,
    pool: str | None,
    image: Arg,
    *,
    step_id: str,
) -> tuple[list[Op], list[Op], list[Op]]:
    """(run, undo, cleanup) of replacing the container on `node` by one of `image`.

    Pull by digest first (a bad digest fails before anything stops). A node with no
    container yet (a standby) just gets the new one; its undo only removes it."""
    name = container_name(node, service)
    old, aside, new = keys(step_id, node.name)
    old_id = AtRun(f"id of the {name} container replaced", old)
    aside_name = AtRun(f"{name}-replaced-SHORT_ID, its name aside", aside)
    new_id = AtRun(f"id of the new {name} container", new)
    inspect = ["docker", "inspect", "--type", "container", "--format"]
    run = [
        *secrets_op(config, service),
        run_op(node.name, ["docker", "pull", image]),
        run_op(
            node.name,
            [*inspect, "{{.Id}}", name],
            note="kept for undo; none on a node without one",
            saves=old,
            may_fail=True,
        ),
        run_op(
            node.name,
            [*inspect, name + "-replaced-{{slice .Id 0 12}}", name],
            saves=aside,
            needs=old,
        ),
        run_op(
            node.name,
            ["sh", "-c", _PUT_ASIDE, "sh", name, old_id, aside_name],
            note="renamed aside (unless an earlier attempt did) and stopped, not removed",
            needs=old,
            changes=True,
        ),
        run_op(
            node.name,
            ["docker", "rm", "-f", name],
            note="what an earlier attempt created; the one replaced is aside by now",
            changes=True,
        ),
        replace(create_op(config, node, service, pool, image, saves=new), latest=True),
        run_op(node.name, ["docker", "start", new_id], changes=True),
    ]
    undo = [
        run_op(node.name, ["docker", "rm", "-f", new_id], needs=new),
        run_op(
            node.name,
            ["sh", "-c", _BRING_BACK, "sh", old_id, name],
            note="the very container replaced, under its name again",
            needs=old,
        ),
    ]
    cleanup = [
        run_op(node.name, ["docker", "rm", old_id], needs=old, note="the replaced container")
    ]
    return run, undo, cleanup


def replacement(
    config: Config,
    node: NodeConfig,
    service: ServiceConfig,
    pool: str | None,
    image: Arg,
    *,
    step_id: str,
    ttft: float,
    within: float,
    verify: bool = True,
) -> tuple[list[Op], list[Op], list[Op]]:
    """`replace_ops` with the readiness of the new container (when `verify`), and the old
    one's health answering again after an undo (only its health: it is put back as it was,
    perhaps the bad build being replaced): what deploy_image and rolling_deploy run."""
    run, undo, cleanup = replace_ops(config, node, service, pool, image, step_id=step_id)
    old = keys(step_id, node.name)[0]
    ready = ready_ops(node, service, ttft, within)
    again = [replace(op, needs=old) for op in ready if isinstance(op.check, HttpWait)]
    return run + (ready if verify else []), undo + again, cleanup


class DeployImageAction(Action[DeployImageStep]):
    step = DeployImageStep
    restores = "removes the new container and starts the one it replaced again"
    checks = (HttpWait, FirstToken)

    def skipped(self, step: DeployImageStep, planner: Planner) -> str | None:
        if not step.args.unless_warm:
            return None
        nodes = planner.group(step.nodes)
        if all((live := planner.was(n.name)) and live.state == "warm-standby" for n in nodes):
            names = ", ".join(n.name for n in nodes)
            return f"{names}: a warm standby, the known-good image already runs there, checked"
        return None

    def unit(self, step: DeployImageStep, node: NodeConfig, scope: Scope, planner: Planner) -> Unit:
        args = step.args
        service = planner.service(args.service, scope)
        pool = planner.text(args.pool, "name", scope) if args.pool else node.pool
        image = planner.image(args.image, service)
        run, undo, cleanup = replacement(
            planner.config,
            node,
            service,
            pool,
            image,
            step_id=step.id,
            ttft=args.ttft,
            within=args.within,
            verify=args.verify,
        )
        return Unit(node.name, run, undo_commands(step, node.name, scope, planner) or undo, cleanup)
