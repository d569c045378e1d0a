"""The rig's on-disk state: one JSON document per simulated node, shared by every stand-in.

Layout of a state directory (``$RELIABILITY_RIG_STATE``)::

    nodes.json           {"addresses": {"127.0.1.1": "gpu-1", ...}}
    registry.json        {"reachable": true, "images": {"repo:tag": "sha256:..."}}
    nodes/<node>.json    {"name", "address", "pool", "nvidia": {...}, "kernel": {...},
                          "docker": {...}}
    nodes/<node>.lock    flock(2) target guarding read-modify-write of the document
    engine.sock          the container engine (see engine.py), when a fleet runs one

The stand-in executables run as the SSH login user while tests write as root, so every
write replaces the file atomically (rename in a directory the login user owns) instead of
writing in place; whoever owns the old file, the rename succeeds.

This module is imported by the stand-in executables on every call: standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

STATE_ENV = "RELIABILITY_RIG_STATE"
NODE_ENV = "RELIABILITY_RIG_NODE"

Document = dict[str, Any]


class RigStateError(RuntimeError):
    """The stand-in cannot find its state (no state dir, unknown node)."""


def state_dir_from_env(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    root = env.get(STATE_ENV)
    if not root:
        raise RigStateError(f"rig: ${STATE_ENV} is not set")
    return Path(root)


def node_from_env(root: Path, environ: dict[str, str] | None = None) -> str:
    """Which simulated node this process runs on.

    ``$RELIABILITY_RIG_NODE`` wins; otherwise the server address of ``$SSH_CONNECTION``
    (its third field) is looked up in ``nodes.json``, so one sshd and one set of shims
    serve many nodes.
    """
    env = os.environ if environ is None else environ
    if env.get(NODE_ENV):
        return env[NODE_ENV]
    fields = env.get("SSH_CONNECTION", "").split()
    if len(fields) >= 3:
        addresses = read_json(root / "nodes.json").get("addresses", {})
        if fields[2] in addresses:
            return str(addresses[fields[2]])
        raise RigStateError(f"rig: no node listens on {fields[2]}")
    raise RigStateError(f"rig: set ${NODE_ENV} or connect over SSH")


def node_path(root: Path, node: str) -> Path:
    return root / "nodes" / f"{node}.json"


def read_json(path: Path) -> Document:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_json(path: Path, document: Document) -> None:
    """Replace ``path`` atomically; readers see the old or the new document, never half."""
    # Imported here: every stand-in call imports this module, and most only read.
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # Key order is kept: `docker inspect` prints State fields in the engine's order.
            json.dump(document, handle, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing, readable by all)."""
    # O_RDONLY is enough for flock, so a lock file created by root still works for the
    # login user.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_node(root: Path, node: str) -> Document:
    document = read_json(node_path(root, node))
    if not document:
        raise RigStateError(f"rig: unknown node {node!r}")
    return document


def read_current_node(environ: dict[str, str] | None = None) -> Document:
    """The document of the node a stand-in runs as (from its environment)."""
    root = state_dir_from_env(environ)
    return read_node(root, node_from_env(root, environ))


def run_command(
    render: Callable[[Document, Sequence[str]], tuple[str, str, int]],
    argv: Sequence[str] | None = None,
) -> int:
    """The main of a stand-in command that answers from this node's state (dmesg,
    journalctl): render it for `argv` (default: the command line), write its stdout and
    stderr, return its exit code."""
    try:
        document = read_current_node()
    except RigStateError as error:
        print(error, file=sys.stderr)
        return 1
    out, err, code = render(document, sys.argv[1:] if argv is None else argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


def update_node(root: Path, node: str, change: Callable[[Document], Any]) -> Any:
    """Apply ``change`` to the node's document under its lock and save it; return its result."""
    path = node_path(root, node)
    with locked(path.with_suffix(".lock")):
        document = read_node(root, node)
        result = change(document)
        write_json(path, document)
    return result


def update_file(path: Path, change: Callable[[Document], Any]) -> Any:
    """Like update_node, for the shared files (nodes.json, registry.json)."""
    with locked(path.with_suffix(".lock")):
        document = read_json(path)
        result = change(document)
        write_json(path, document)
    return result
