"""`docker` stand-in: the commands runbooks and collectors use, with real output and exit codes.

Supported: ``run -d``, ``start``, ``stop``, ``restart``, ``rm [-f]``, ``inspect``
(also ``container inspect``), ``ps [-a] [-q] [--filter name=|status=|label=]``, ``pull``,
``image inspect``; ``--format`` takes the Go-template subset these use (``{{json .State}}``,
``{{.State.Status}}``, ``{{index .RepoDigests 0}}``, ``{{json .}}``).

State lives in the node document (``docker.images``, ``docker.containers``); images come
from ``registry.json``, shared by the fleet. A container that publishes a port (``-p``, or
``--network host`` with vLLM's ``--port``) is served by the fleet's container engine: an
inference stand-in on the node's own address reporting the container's image and pool
(label or env ``pool``). Without an engine the container is bookkeeping only.
"""

from __future__ import annotations

import hashlib
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
}  # fmt: skip
_RUN_FLAGS = {"-d", "--detach", "--rm", "-i", "-t", "-it", "--init", "--privileged"}


def _split_run(args: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    options: dict[str, list[str]] = {}
    while args and args[0].startswith("-"):
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in _RUN_VALUE_OPTIONS:
            if not eq:
                if not args:
                    raise DockerError(
                        f'docker: flag needs an argument: {key}\nSee "docker run --help".', 125
                    )
                value = args.pop(0)
            options.setdefault(key.lstrip("-"), []).append(value)
        elif arg in _RUN_FLAGS:
            options.setdefault(arg.lstrip("-"), []).append("")
        else:
            raise DockerError(f"unknown flag: {arg}\nSee 'docker run --help'.", 125)
    if not args:
        raise DockerError('docker: "docker run" requires at least 1 argument.', 125)
    return options, args[0], args[1:]


def _pairs(values: list[str]) -> dict[str, str]:
    return dict(v.partition("=")[::2] for v in values)


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


def run(root: Path, node: str, args: list[str]) -> tuple[str, str]:
    """``docker run -d``: (the container id line, what the pull printed on stderr)."""
    options, ref, cmd = _split_run(list(args))
    if "d" not in options and "detach" not in options:
        raise DockerError("docker: the rig simulates detached containers only (-d).", 125)
    doc = state.read_node(root, node)
    notes = ""
    if find_image(doc, ref) is None:
        notes = f"Unable to find image '{ref}' locally\n"
        try:
            # `docker run` shows the pull's progress but not its final image-name line.
            notes += pull(root, node, ref).rsplit("\n", 2)[0] + "\n"
        except DockerError as error:
            raise DockerError(
                notes + "docker: " + error.text + "\nSee 'docker run --help'.", 125
            ) from None
    name = (
        options.get("name") or [f"rig_{hashlib.sha1(str(time.time()).encode()).hexdigest()[:8]}"]
    )[0]
    labels, env = (
        _pairs(options.get("l", []) + options.get("label", [])),
        _pairs(options.get("e", []) + options.get("env", [])),
    )
    record = state.update_node(
        root, node, lambda d: _create(d, name, ref, cmd, options, labels, env)
    )
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
) -> Doc:
    containers = doc["docker"]["containers"]
    if name in containers:
        raise DockerError(
            f'docker: Error response from daemon: Conflict. The container name "/{name}" '
            f'is already in use by container "{containers[name]["Id"]}". You have to remove '
            "(or rename) that container to be able to reuse that name.\nSee 'docker run --help'.",
            125,
        )
    image = find_image(doc, ref)
    assert image is not None  # pulled by run() just before
    port = _served_port(options, cmd)
    pool = labels.get("pool") or env.get("pool") or env.get("POOL") or doc.get("pool") or "default"
    model = (
        _cmd_option(cmd, "--served-model-name") or _cmd_option(cmd, "--model") or env.get("MODEL")
    )
    record = fmt.new_container(
        name, ref, image, cmd, labels, env, port, pool, model, doc["address"], options
    )
    containers[name] = record
    return record


def _start(root: Path, node: str, name: str, *, run_error: bool = False) -> None:
    doc = state.read_node(root, node)
    record = doc["docker"]["containers"].get(name)
    if record is None:
        raise DockerError(
            f"Error response from daemon: No such container: {name}\n"
            f"Error: failed to start containers: {name}"
        )
    if record["State"]["Running"]:
        return
    rig = record["Rig"]
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


def stop(root: Path, node: str, name: str) -> None:
    doc = state.read_node(root, node)
    record = doc["docker"]["containers"].get(name)
    if record is None:
        raise DockerError(f"Error response from daemon: No such container: {name}")
    if not record["State"]["Running"]:
        return
    if record["Rig"].get("port"):
        engine_client.request(root, {"op": "stop", "node": node, "container": name})
    state.update_node(root, node, lambda d: fmt.mark_exited(d["docker"]["containers"][name], 0))


def remove(root: Path, node: str, name: str, force: bool) -> None:
    doc = state.read_node(root, node)
    record = doc["docker"]["containers"].get(name)
    if record is None:
        raise DockerError(f"Error response from daemon: No such container: {name}")
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
            record = doc["docker"]["containers"].get(name)
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
        if command == "run":
            return (*run(root, node, args), 0)
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
    out, err = "", ""
    for name in args:
        try:
            if command in ("stop", "restart"):
                stop(root, node, name)
            if command in ("start", "restart"):
                _start(root, node, name)
            if command == "rm":
                remove(root, node, name, force)
            out += name + "\n"
        except DockerError as error:
            err += error.text + "\n"
    return out, err, 1 if err else 0


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
