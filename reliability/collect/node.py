"""Node health over SSH: load, CPUs, memory, free disk on watched paths, serving container
and the image it runs, pinned by digest (so a deploy by CI or by hand is seen too).

Each cycle runs ONE POSIX `sh` script per node (the login shell may be dash or busybox)
that prints marked sections, then a no-op `true` whose round trip is `node_ssh_rtt_seconds`:
the catalogue defines the RTT as that of a no-op, and timing the script instead would make
a slow `docker inspect` look like a slow network. Both commands share the collector's
`timeout`, so a node whose network is cut fails within it and shows `node_up 0`.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reliability import catalog
from reliability.collect import base
from reliability.collect.base import CollectError, Sample
from reliability.ssh import SshError, SshPool, SshTarget

log = logging.getLogger(__name__)

MARK = "==reliability=="
# df -P: filesystem (may contain spaces), 1024-blocks, used, available, capacity, mount point.
_DF_ROW = re.compile(r"^(?P<fs>.+?)\s+(?P<size>\d+)\s+(?P<used>\d+)\s+(?P<free>\d+)\s+\S+\s+/")
_NO_SUCH = ("No such object", "No such container")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node to watch: its SSH target, the absolute paths whose free space matters
    (e.g. "/" and "/var/lib/docker") and the serving container's name, if any."""

    name: str
    target: SshTarget
    paths: tuple[str, ...] = ("/",)
    container: str | None = None

    def __post_init__(self) -> None:
        relative = [p for p in self.paths if not p.startswith("/")]
        if relative:
            raise ValueError(f"node {self.name}: watched paths must be absolute: {relative}")


@dataclass(frozen=True, slots=True)
class Container:
    """`state` is docker's Status (running, exited, ...), or missing / unknown; `image`
    the image it runs as REF@sha256:..., None when not read this cycle or docker knows no
    registry digest of it (an image built on the node); `image_id` docker's id of it."""

    state: str
    running: bool
    image: str | None = None
    image_id: str | None = None


@dataclass(frozen=True, slots=True)
class NodeReading:
    """What one run of the node script reported. `paths` maps each watched path that
    `df` could read to (size bytes, bytes free for unprivileged users)."""

    load: tuple[float, float, float]
    cpus: int
    memory_available: int
    memory_total: int
    paths: dict[str, tuple[int, int]]
    container: Container | None


class BadOutput(ValueError):
    """The node script's output cannot be parsed."""


def node_script(
    paths: Sequence[str], container: str | None, step_timeout: int, known_image: str = ""
) -> str:
    """The POSIX sh script whose output `parse_output` reads. `df` and `docker` can hang
    (a dead NFS mount, a wedged dockerd), so each runs under `timeout` where it exists.
    The image's registry digests are asked for only when the container was not started
    by digest and runs another image than `known_image` (an id whose digest is known)."""
    lines = [
        f't() {{ if command -v timeout >/dev/null 2>&1; then timeout {step_timeout} "$@"; '
        'else "$@"; fi; }',
        f"echo '{MARK} node 1'",
        f"echo '{MARK} loadavg'; cat /proc/loadavg",
        f"echo '{MARK} cpus'; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc",
        f"echo '{MARK} meminfo'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo",
    ]
    for i, path in enumerate(paths):
        lines.append(f"echo '{MARK} df {i}'; t df -P -k {shlex.quote(path)} 2>/dev/null")
    if container is not None:
        # The state, the reference it was started by and the image id (last word); then
        # the image's registry digests, by that id.
        inspect = "{{json .State}} {{json .Config.Image}} {{.Image}}"
        lines.append(
            f"echo '{MARK} docker'; "
            f"s=$(t docker inspect --format '{inspect}' {shlex.quote(container)} 2>&1); r=$?; "
            f'echo "$s"; echo "{MARK} docker_rc $r"'
        )
        lines.append(
            f'if [ $r -eq 0 ] && [ "${{s##* }}" != {shlex.quote(known_image)} ]; then '
            f"case \"$s\" in *@sha256:*) ;; *) echo '{MARK} image'; "
            "t docker image inspect --format '{{json .RepoDigests}}' \"${s##* }\" 2>/dev/null;; "
            "esac; fi"
        )
    lines.append(f"echo '{MARK} end'")
    return "\n".join(lines) + "\n"


def _sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            current = sections.setdefault(line[len(MARK) + 1 :].strip(), [])
        elif current is not None:
            current.append(line)
    if "node 1" not in sections or "end" not in sections:
        raise BadOutput("node script output lacks its start or end marker")
    return sections


def _container(sections: dict[str, list[str]]) -> Container:
    rc_keys = [k for k in sections if k.startswith("docker_rc ")]
    if not rc_keys:
        raise BadOutput("docker section lacks its exit status")
    text = "\n".join(sections.get("docker", []))
    if rc_keys[0] != "docker_rc 0":
        if any(s in text for s in _NO_SUCH):
            return Container("missing", False)
        # docker absent, dockerd down or hung: we cannot tell whether it serves.
        return Container("unknown", False)
    line = next((x for x in sections["docker"] if x.startswith("{")), "")
    try:
        state, end = json.JSONDecoder().raw_decode(line)
        container = Container(str(state["Status"]), bool(state["Running"]))
    except (ValueError, TypeError, KeyError) as e:
        raise BadOutput(f"docker inspect printed no container state: {text[:200]!r}") from e
    words = line[end:].split()
    if len(words) != 2:
        return container
    try:
        ref = json.loads(words[0])
        digests = json.loads("\n".join(sections["image"])) if "image" in sections else None
    except ValueError:
        return container  # the image removed meanwhile: its digest is unknown this cycle
    return Container(container.state, container.running, pinned_image(ref, digests), words[1])


def pinned_image(ref: str, repo_digests: list[str] | None) -> str | None:
    """The image a container started by `ref` runs, pinned by digest: `ref` itself when
    pinned, else the registry digest of its repository (of any, when none matches)."""
    if "@sha256:" in ref:
        return ref
    name = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    digests = [d for d in repo_digests or [] if "@sha256:" in d]
    return next((d for d in digests if d.split("@", 1)[0] == name), digests[0] if digests else None)


def parse_output(output: str, paths: Sequence[str], *, container: bool) -> NodeReading:
    """Parse `node_script` output; raises `BadOutput` when a required section is garbled.
    A watched path that `df` cannot read (missing, unmounted) is left out, not an error."""
    sections = _sections(output)
    try:
        fields = sections["loadavg"][0].split()
        load = (float(fields[0]), float(fields[1]), float(fields[2]))
        cpus = int(sections["cpus"][0].strip())
        meminfo = {}
        for line in sections["meminfo"]:
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0]) * 1024  # /proc/meminfo counts kB
        available, total = meminfo["MemAvailable"], meminfo["MemTotal"]
    except (KeyError, IndexError, ValueError) as e:
        raise BadOutput(f"unreadable /proc data: {e!r}") from e
    if cpus < 1 or total < 1:
        raise BadOutput(f"implausible cpus={cpus} or MemTotal={total}")
    disk: dict[str, tuple[int, int]] = {}
    for i, path in enumerate(paths):
        rows = [m for x in sections.get(f"df {i}", []) if (m := _DF_ROW.match(x))]
        if rows:
            disk[path] = (int(rows[-1]["size"]) * 1024, int(rows[-1]["free"]) * 1024)
        else:
            log.debug("node df: no row for %s", path)
    return NodeReading(
        load, cpus, available, total, disk, _container(sections) if container else None
    )


def reading_samples(node: NodeSpec, reading: NodeReading) -> list[Sample]:
    """The catalogue samples of one reading (without node_up and the RTT)."""
    n = node.name
    out = [
        Sample(catalog.NODE_LOAD, (n, period), value)
        for period, value in zip(("1m", "5m", "15m"), reading.load, strict=True)
    ]
    out += [
        Sample(catalog.NODE_CPUS, (n,), float(reading.cpus)),
        Sample(catalog.NODE_MEMORY_AVAILABLE, (n,), float(reading.memory_available)),
        Sample(catalog.NODE_MEMORY_TOTAL, (n,), float(reading.memory_total)),
    ]
    for path, (size, free) in reading.paths.items():
        out.append(Sample(catalog.NODE_PATH_SIZE, (n, path), float(size)))
        out.append(Sample(catalog.NODE_PATH_FREE, (n, path), float(free)))
    if node.container is not None and reading.container is not None:
        c = reading.container
        out.append(
            Sample(catalog.NODE_CONTAINER_RUNNING, (n, node.container, c.state), float(c.running))
        )
        if c.running and c.image is not None:
            out.append(Sample(catalog.NODE_CONTAINER_IMAGE, (n, node.container, c.image), 1.0))
    return out


class NodeCollector:
    """Collector "node": one SSH script per node per cycle, all within `timeout` seconds.

    `collect` raises `CollectError` (reason from the SSH error) carrying `node_up 0` when
    the node does not answer, so it shows down instead of stale. Output it cannot parse
    raises reason "bad_output" with `node_up 1`: SSH works, and calling the node down would
    trigger a failover that the node's health does not justify. The registry digest of the
    image each container runs is kept by image id, so docker is asked for it again only
    when the container runs another image.
    """

    name = base.NODE

    def __init__(self, pool: SshPool, nodes: Sequence[NodeSpec], timeout: float) -> None:
        self._pool = pool
        self._nodes = {n.name: n for n in nodes}
        if len(self._nodes) != len(nodes):
            raise ValueError("node names must be unique")
        self._timeout = timeout
        self._digests: dict[str, tuple[str, str]] = {}  # node -> (image id, REF@sha256:...)

    def targets(self) -> Sequence[str]:
        return tuple(self._nodes)

    def collect(self, target: str) -> Sequence[Sample]:
        node = self._nodes[target]
        deadline = time.monotonic() + self._timeout
        # Leave each hang-prone step a share of the budget so one stuck step cannot eat it.
        step = max(1, int(self._timeout / (len(node.paths) + 2)))
        known_id, known_image = self._digests.get(node.name, ("", ""))
        script = node_script(node.paths, node.container, step, known_id)
        up = Sample(catalog.NODE_UP, (node.name,), 1.0)
        try:
            result = self._pool.run(node.target, script, timeout=self._timeout)
        except SshError as e:
            down = Sample(catalog.NODE_UP, (node.name,), 0.0)
            raise CollectError(e.reason, str(e), samples=[down]) from e
        try:
            reading = parse_output(result.stdout, node.paths, container=node.container is not None)
        except BadOutput as e:
            detail = f"{node.name}: {e} (exit {result.exit_status}, stderr {result.stderr[:200]!r})"
            raise CollectError("bad_output", detail, samples=[up]) from e
        c = reading.container
        if c is not None and c.image_id is not None:
            if c.image is None and c.image_id == known_id:
                reading = replace(reading, container=replace(c, image=known_image))
            elif c.image is not None:
                self._digests[node.name] = (c.image_id, c.image)
        samples = [up, *reading_samples(node, reading)]
        try:
            rtt = self._pool.run(node.target, "true", timeout=deadline - time.monotonic())
            samples.append(Sample(catalog.NODE_SSH_RTT, (node.name,), rtt.duration))
        except SshError as e:
            # The script answered, so the node is up; only the RTT is unknown this cycle.
            log.info("node %s: no RTT this cycle (%s)", node.name, e.reason)
        return samples
