"""`docker` stand-in: the commands runbooks and collectors use, with real output and exit codes.

Supported: ``run -d``, ``create``, ``start``, ``stop``, ``restart``, ``rename``, ``rm [-f]``,
``inspect`` (also ``container inspect``), ``ps [-a] [-q] [--filter name=|status=|label=]``,
``pull``, ``image inspect``; a container is named by its name, its id or a unique prefix
of it; ``--format`` takes the Go-template subset these use (``{{json .State}}``,
``{{.State.Status}}``, ``{{index .RepoDigests 0}}``, ``{{slice .Id 0 12}}``, ``{{json .}}``).

A container keeps its whole run spec (command, arguments, environment, ``--env-file``
included, volumes, IPC, shared memory, ulimits, GPUs, labels) and ``docker inspect`` shows
it in docker's shape (``Config.Cmd``/``Env``/``Entrypoint``, ``Mounts``, ``HostConfig``).

State lives in the node document (``docker.images``, ``docker.containers``); images come
from ``registry.json``, shared by the fleet. A container that publishes a port (``-p``, or
``--network host`` with vLLM's ``--port``) is served by the fleet's container engine: an
inference stand-in on the node's own address reporting the container's image and pool
(label or env ``pool``), serving only the model its arguments name (``--model``,
``--served-model-name``, SGLang's ``--model-path``, ``serve MODEL``). Like vLLM, a serving
container started without one exits at once (code 2) and serves nothing. Without an engine
the container is bookkeeping only.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from reliability.testing import docker_format as fmt
from reliability.testing import engine_client, state
from reliability.testing.docker_images import DockerError, find_image, pull
from reliability.testing.state import Document as Doc

_RUN_VALUE_OPTIONS = {
    "--name", "-p", "--publish", "-e", "--env", "-l", "--label", "--restart", "--gpus",
    "--ipc", "--shm-size", "-v", "--volume", "--network", "--net", "--entrypoint", "-w",
    "--workdir", "-u", "--user", "-m", "--memory", "--cpus", "--ulimit", "--runtime",
    "--log-driver", "--log-opt", "--health-cmd", "--health-interval", "--health-timeout",
    "--health-retries", "--health-start-period", "--pull", "--platform", "--hostname",
    "--env-file",
}  # fmt: skip
EXIT_NO_MODEL = 2  # vLLM's argument parser, when the model is missing
_RUN_FLAGS = {"-d", "--detach", "--rm", "-i", "-t", "-it", "--init", "--privileged"}


def _split_run(args: list[str], verb: str = "run") -> tuple[dict[str, list[str]], str, list[str]]:
    options: dict[str, list[str]] = {}
    while args and args[0].startswith("-"):
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in _RUN_VALUE_OPTIONS:
            if not eq:
                if not args:
                    raise DockerError(
                        f'docker: flag needs an argument: {key}\nSee "docker {verb} --help".', 125
                    )
                value = args.pop(0)
            options.setdefault(key.lstrip("-"), []).append(value)
        elif arg in _RUN_FLAGS and not (verb == "create" and arg in ("-d", "--detach")):
            options.setdefault(arg.lstrip("-"), []).append("")
        else:
            raise DockerError(f"unknown flag: {arg}\nSee 'docker {verb} --help'.", 125)
    if not args:
        raise DockerError(f'docker: "docker {verb}" requires at least 1 argument.', 125)
    return options, args[0], args[1:]


def _pairs(values: list[str]) -> dict[str, str]:
    return dict(v.partition("=")[::2] for v in values)


def _environment(options: dict[str, list[str]], verb: str) -> dict[str, str]:
    """The container's environment as docker builds it: each --env-file in turn, then
    -e; `NAME` alone takes the CLI's own value, and is left out when it has none."""
    env: dict[str, str] = {}
    lines: list[str] = []
    for path in options.get("env-file", []):
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise DockerError(
                f"docker: open {path}: {(error.strerror or 'error').lower()}.\n"
                f"See 'docker {verb} --help'.",
                125,
            ) from None
        lines += [ln.lstrip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
    for entry in [*lines, *options.get("e", []), *options.get("env", [])]:
        name, eq, value = entry.partition("=")
        if not name or any(c.isspace() for c in name):
            raise DockerError(f"docker: variable '{name}' contains whitespaces.", 125)
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _model(cmd: list[str]) -> str | None:
    """The model the engine serves, from its arguments (vLLM, SGLang)."""
    named = _cmd_option(cmd, "--served-model-name")
    if named:
        return named
    for option in ("--model", "--model-path"):
        if value := _cmd_option(cmd, option):
            return value
    if "serve" in cmd:  # `vllm serve MODEL`
        rest = cmd[cmd.index("serve") + 1 :]
        if rest and not rest[0].startswith("-"):
            return rest[0]
    return None


def _served_port(options: dict[str, list[str]], cmd: list[str]) -> int | None:
    publish = options.get("p", []) + options.get("publish", [])
    if publish:
        # [ip:]host:container[/proto], or a bare container port (taken as the host's too)
        parts = publish[0].split("/")[0].split(":")
        return int(parts[-2] if len(parts) > 1 else parts[0])
    if (options.get("network") or options.get("net") or [""])[0] == "host":
        return int(_cmd_option(cmd, "--port") or 8000)
    return None


def _cmd_option(cmd: list[str], name: str) -> str | None:
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def run(root: Path, node: str, args: list[str], verb: str = "run") -> tuple[str, str]:
    """``docker run -d`` (or ``docker create``, which does not start it): (the container id
    line, what the pull printed on stderr)."""
    options, ref, cmd = _split_run(list(args), verb)
    if verb == "run" and "d" not in options and "detach" not in options:
        raise DockerError("docker: the rig simulates detached containers only (-d).", 125)
    env = _environment(options, verb)
    doc = state.read_node(root, node)
    notes = ""
    if find_image(doc, ref) is None:
        notes = f"Unable to find image '{ref}' locally\n"
        try:
            # `docker run` shows the pull's progress but not its final image-name line.
            notes += pull(root, node, ref).rsplit("\n", 2)[0] + "\n"
        except DockerError as error:
            raise DockerError(
                notes + "docker: " + error.text + f"\nSee 'docker {verb} --help'.", 125
            ) from None
    name = (
        options.get("name") or [f"rig_{hashlib.sha1(str(time.time()).encode()).hexdigest()[:8]}"]
    )[0]
    labels = _pairs(options.get("l", []) + options.get("label", []))
    record = state.update_node(
        root, node, lambda d: _create(d, name, ref, cmd, options, labels, env, verb)
    )
    if verb == "run":
        _start(root, node, name, run_error=True)
    return record["Id"] + "\n", notes


def _create(
    doc: Doc,
    name: str,
    ref: str,
    cmd: list[str],
    options: dict[str, list[str]],
    labels: dict[str, str],
    env: dict[str, str],
    verb: str,
) -> Doc:
    containers = doc["docker"]["containers"]
    if name in containers:
        raise DockerError(
            "docker: " + _conflict(name, containers[name]["Id"]) + f"\nSee 'docker {verb} --help'.",
            125,
        )
    image = find_image(doc, ref)
    assert image is not None  # pulled by run() just before
    port = _served_port(options, cmd)
    pool = labels.get("pool") or env.get("pool") or env.get("POOL") or doc.get("pool") or "default"
    model = _model(cmd)
    record = fmt.new_container(
        name, ref, image, cmd, labels, env, port, pool, model, doc["address"], options
    )
    containers[name] = record
    return record


def _conflict(name: str, holder: str) -> str:
    return (
        f'Error response from daemon: Conflict. The container name "/{name}" is already in '
        f'use by container "{holder}". You have to remove (or rename) that container to be '
        "able to reuse that name."
    )


def find(doc: Doc, ref: str) -> str | None:
    """The name of the container `ref` names, as the daemon resolves it: full id, then
    name, then a unique id prefix; None when none does."""
    containers = doc["docker"]["containers"]
    by_id = [n for n, r in containers.items() if r["Id"] == ref]
    if by_id:
        return by_id[0]
    if ref in containers:
        return ref
    prefixed = [n for n, r in containers.items() if ref and r["Id"].startswith(ref)]
    if len(prefixed) > 1:
        raise DockerError(
            f"Error response from daemon: multiple IDs found with provided prefix: {ref}"
        )
    return prefixed[0] if prefixed else None


def _start(root: Path, node: str, ref: str, *, run_error: bool = False) -> None:
    doc = state.read_node(root, node)
    name = find(doc, ref)
    if name is None:
        raise DockerError(
            f"Error response from daemon: No such container: {ref}\n"
            f"Error: failed to start containers: {ref}"
        )
    record = doc["docker"]["containers"][name]
    if record["State"]["Running"]:
        return
    rig = record["Rig"]
    if rig.get("port") and not rig.get("model"):
        # The engine's argument parser refuses to start: the container exits at once.
        def refused(d: Doc) -> None:
            fmt.mark_running(d["docker"]["containers"][name])
            fmt.mark_exited(d["docker"]["containers"][name], EXIT_NO_MODEL)

        state.update_node(root, node, refused)
        return
    if rig.get("port"):
        answer = engine_client.request(
            root, {"op": "start", "node": node, "container": name, **rig}
        )
        if not answer.get("ok", False):
            reason = (
                "driver failed programming external connectivity on endpoint "
                f"{name} ({record['Id']}): Bind for {rig['host']}:{rig['port']} failed: "
                f"{answer.get('error', 'unknown error')}"
            )
            if run_error:
                raise DockerError(
                    f"docker: Error response from daemon: {reason}.\nSee 'docker run --help'.", 125
                )
            raise DockerError(
                f"Error response from daemon: {reason}\nError: failed to start containers: {name}"
            )
    state.update_node(root, node, lambda d: fmt.mark_running(d["docker"]["containers"][name]))


def stop(root: Path, node: str, ref: str) -> None:
    doc = state.read_node(root, node)
    name = find(doc, ref)
    if name is None:
        raise DockerError(f"Error response from daemon: No such container: {ref}")
    record = doc["docker"]["containers"][name]
    if not record["State"]["Running"]:
        return
    if record["Rig"].get("port"):
        engine_client.request(root, {"op": "stop", "node": node, "container": name})
    state.update_node(root, node, lambda d: fmt.mark_exited(d["docker"]["containers"][name], 0))


def rename(root: Path, node: str, args: list[str]) -> None:
    """``docker rename CONTAINER NEW_NAME``: prints nothing; a running container keeps
    serving under its new name."""
    if len(args) != 2:
        raise DockerError(
            "\"docker rename\" requires exactly 2 arguments.\nSee 'docker rename --help'."
        )
    ref, new = args
    doc = state.read_node(root, node)
    name = find(doc, ref)
    if name is None:
        raise DockerError(f"Error response from daemon: No such container: {ref}")
    if new == name:
        raise DockerError(
            "Error response from daemon: Renaming a container with the same name as its "
            "current name"
        )
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", new):
        raise DockerError(
            f"Error response from daemon: Invalid container name ({new}), only "
            "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )

    def move(d: Doc) -> None:
        containers = d["docker"]["containers"]
        if new in containers:
            raise DockerError(_conflict(new, containers[new]["Id"]))
        record = containers.pop(name)
        record["Name"] = f"/{new}"
        containers[new] = record

    state.update_node(root, node, move)
    if doc["docker"]["containers"][name]["State"]["Running"]:
        engine_client.request(root, {"op": "rename", "node": node, "container": name, "to": new})


def remove(root: Path, node: str, ref: str, force: bool) -> None:
    doc = state.read_node(root, node)
    name = find(doc, ref)
    if name is None:
        raise DockerError(f"Error response from daemon: No such container: {ref}")
    record = doc["docker"]["containers"][name]
    if record["State"]["Running"]:
        if not force:
            raise DockerError(
                f'Error response from daemon: cannot remove container "/{name}": '
                "container is running: stop the container before removing or force remove"
            )
        stop(root, node, name)
    state.update_node(root, node, lambda d: d["docker"]["containers"].pop(name))


def _take(args: list[str], *names: str) -> str | None:
    """Remove ``--name value`` (or ``--name=value``) from ``args``; the value, or None."""
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in names:
            del args[i]
            if eq:
                return value
            if i == len(args):
                raise DockerError(f"flag needs an argument: {key}")
            return args.pop(i)
    return None


def _flag(args: list[str], *names: str) -> bool:
    found = [a for a in args if a in names]
    for a in found:
        args.remove(a)
    return bool(found)


def inspect(doc: Doc, args: list[str], kind: str) -> tuple[str, str, int]:
    template = _take(args, "-f", "--format")
    if kind == "object":
        kind = _take(args, "--type") or "object"
    found, errors = [], []
    for name in args:
        record = None
        if kind in ("object", "container"):
            found_name = find(doc, name)
            record = doc["docker"]["containers"][found_name] if found_name else None
            record = fmt.inspect_container(record) if record else None
        if record is None and kind in ("object", "image"):
            image = find_image(doc, name)
            record = fmt.inspect_image(image) if image else None
        if record is None:
            errors.append(f"Error: No such {kind}: {name}\n")
        else:
            found.append(record)
    if template is None:
        out = fmt.go_json(found, indent=True) + "\n"
    else:
        out = "".join(fmt.render_template(template, record) + "\n" for record in found)
    return out, "".join(errors), 1 if errors else 0


def ps(doc: Doc, args: list[str]) -> str:
    show_all, quiet = _flag(args, "-a", "--all"), _flag(args, "-q", "--quiet")
    filters: dict[str, list[str]] = {}
    while (value := _take(args, "-f", "--filter")) is not None:
        key, _, wanted = value.partition("=")
        filters.setdefault(key, []).append(wanted)
    template = _take(args, "--format")
    if args:
        raise DockerError(f"unknown flag: {args[0]}\nSee 'docker ps --help'.")
    rows = []
    for record in doc["docker"]["containers"].values():
        if not (show_all or record["State"]["Running"]) or not _matches(record, filters):
            continue
        rows.append(fmt.ps_row(record))
    rows.sort(key=lambda row: row["CreatedAt"], reverse=True)
    if quiet:
        return "".join(row["ID"] + "\n" for row in rows)
    if template is None:
        return fmt.ps_table(rows)
    return "".join(fmt.render_template(template, row) + "\n" for row in rows)


def _matches(record: Doc, filters: dict[str, list[str]]) -> bool:
    name = record["Name"].lstrip("/")
    checks = {
        "name": lambda v: re.search(v, name) or re.search(v, "/" + name),
        "status": lambda v: record["State"]["Status"] == v,
        "label": lambda v: fmt.label_matches(record["Config"]["Labels"], v),
    }
    for key, values in filters.items():
        if key not in checks:
            raise DockerError(f"Error response from daemon: invalid filter '{key}'")
        if not any(checks[key](v) for v in values):
            return False
    return True


def dispatch(root: Path, node: str, argv: Sequence[str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of ``docker ARGV`` on ``node``."""
    args = list(argv)
    command = args.pop(0) if args else ""
    if command in ("container", "image") and args:
        command = f"{command} {args.pop(0)}"
    try:
        if command in ("run", "create", "container create"):
            return (*run(root, node, args, command.removeprefix("container ")), 0)
        if command in ("rename", "container rename"):
            rename(root, node, args)
            return "", "", 0
        if command == "pull" and len(args) == 1:
            return pull(root, node, args[0]), "", 0
        if command in ("inspect", "container inspect", "image inspect"):
            kind = {"inspect": "object", "container inspect": "container"}.get(command, "image")
            return inspect(state.read_node(root, node), args, kind)
        if command in ("ps", "container ls"):
            return ps(state.read_node(root, node), args), "", 0
        if command in ("stop", "start", "restart", "rm"):
            return _each(root, node, command, args)
    except DockerError as error:
        return "", error.text + "\n", error.code
    except ValueError as error:  # a --format template docker would reject
        return "", f"{error}\n", 1
    return "", f"docker: '{command}' is not a docker command.\nSee 'docker --help'\n", 1


def _each(root: Path, node: str, command: str, args: list[str]) -> tuple[str, str, int]:
    force = _flag(args, "-f", "--force")
    _take(args, "-t", "--time", "--timeout", "-s", "--signal")
    out, err, failed = "", "", False
    for name in args:
        try:
            if command in ("stop", "restart"):
                stop(root, node, name)
            if command in ("start", "restart"):
                _start(root, node, name)
            if command == "rm":
                if force and find(state.read_node(root, node), name) is None:
                    # Docker 20.10+: `rm -f` of no such container warns and succeeds.
                    err += f"Error response from daemon: No such container: {name}\n"
                    continue
                remove(root, node, name, force)
            out += name + "\n"
        except DockerError as error:
            err += error.text + "\n"
            failed = True
    return out, err, 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        root = state.state_dir_from_env()
        node = state.node_from_env(root)
    except state.RigStateError as error:
        print(error, file=sys.stderr)
        return 1
    out, err, code = dispatch(root, node, sys.argv[1:] if argv is None else argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main())
