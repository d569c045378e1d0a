"""Shapes the docker stand-in prints: container and image records, `ps` rows, Go templates.

The records mirror the fields of ``docker inspect`` that tools read (``State`` keeps the
engine's field order: Status, Running, Paused, Restarting, OOMKilled, Dead, Pid, ExitCode,
Error, StartedAt, FinishedAt, then Health when set). JSON is printed the way Go's
encoder does: compact, UTF-8, with ``<``, ``>`` and ``&`` escaped.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from typing import Any

from reliability.testing.state import Document as Doc

ZERO_TIME = "0001-01-01T00:00:00Z"
_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def rfc3339nano(epoch_ns: int | None = None) -> str:
    ns = time.time_ns() if epoch_ns is None else epoch_ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _epoch(stamp: str) -> float:
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


def new_container(
    name: str,
    ref: str,
    image: Doc,
    cmd: list[str],
    labels: dict[str, str],
    env: dict[str, str],
    port: int | None,
    pool: str,
    model: str | None,
    address: str,
    options: dict[str, list[str]],
) -> Doc:
    """A freshly created (not yet started) container record; ``Rig`` is the engine's part."""
    network = (options.get("network") or options.get("net") or ["bridge"])[0]
    bindings = {f"{port}/tcp": [{"HostIp": address, "HostPort": str(port)}]} if port else {}
    restart = (options.get("restart") or ["no"])[0]
    volumes = options.get("v", []) + options.get("volume", [])
    entrypoint = options.get("entrypoint")
    return {
        "Id": hashlib.sha256(f"{name}/{time.time_ns()}".encode()).hexdigest(),
        "Name": f"/{name}",
        "Created": rfc3339nano(),
        "Image": image["id"],
        "Config": {
            "Image": ref,
            "Entrypoint": entrypoint[-1:] if entrypoint else None,
            "Cmd": cmd,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": labels,
        },
        "HostConfig": {
            "Binds": volumes or None,
            "NetworkMode": network,
            "PortBindings": bindings if network != "host" else {},
            "RestartPolicy": {"Name": restart.split(":")[0], "MaximumRetryCount": 0},
            "IpcMode": (options.get("ipc") or ["private"])[-1],
            "ShmSize": size_bytes((options.get("shm-size") or ["64m"])[-1]),
            "Ulimits": [_ulimit(u) for u in options.get("ulimit", [])] or None,
            "DeviceRequests": [_gpus(g) for g in options.get("gpus", [])] or None,
        },
        "Mounts": [_mount(v) for v in volumes],
        "State": {
            "Status": "created",
            "Running": False,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 0,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": ZERO_TIME,
            "FinishedAt": ZERO_TIME,
        },
        "RestartCount": 0,
        "Rig": {
            "host": address,
            "port": port,
            "pool": pool,
            "image": ref,
            "image_digest": image["digest"],
            "model": model,
        },
    }


def size_bytes(text: str) -> int:
    """Docker's RAMInBytes: a number with an optional b, k, m or g (powers of 1024)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", text.strip().lower())
    if match is None:
        raise ValueError(f'invalid argument "{text}" for "--shm-size" flag: invalid size')
    power = " kmgt".index(match.group(2) or " ") if match.group(2) != "b" else 0
    return int(float(match.group(1)) * 1024**power)


def _ulimit(text: str) -> Doc:
    name, _, limits = text.partition("=")
    soft, _, hard = limits.partition(":")
    return {"Name": name, "Hard": int(hard or soft), "Soft": int(soft)}


def _gpus(text: str) -> Doc:
    ids = text.removeprefix("device=").split(",") if text.startswith("device=") else None
    count = -1 if text == "all" else (0 if ids else int(text))
    return {
        "Driver": "",
        "Count": count,
        "DeviceIDs": ids,
        "Capabilities": [["gpu"]],
        "Options": {},
    }


def _mount(volume: str) -> Doc:
    """A `-v SOURCE:DEST[:MODE]` as inspect's ``Mounts`` shows it."""
    source, _, rest = volume.partition(":")
    destination, _, mode = rest.partition(":")
    if source.startswith("/"):
        return {
            "Type": "bind",
            "Source": source,
            "Destination": destination,
            "Mode": mode,
            "RW": mode != "ro",
            "Propagation": "rprivate",
        }
    return {
        "Type": "volume",
        "Name": source,
        "Source": f"/var/lib/docker/volumes/{source}/_data",
        "Destination": destination,
        "Driver": "local",
        "Mode": mode or "z",
        "RW": mode != "ro",
        "Propagation": "",
    }


def mark_running(record: Doc) -> None:
    fake_pid = 1000 + int(record["Id"][:8], 16) % 60000
    record["State"].update(
        Status="running", Running=True, Pid=fake_pid, ExitCode=0, Error="", StartedAt=rfc3339nano()
    )


def mark_exited(record: Doc, exit_code: int, error: str = "") -> None:
    record["State"].update(
        Status="exited",
        Running=False,
        Pid=0,
        ExitCode=exit_code,
        Error=error,
        FinishedAt=rfc3339nano(),
    )


def inspect_container(record: Doc) -> Doc:
    return {key: value for key, value in record.items() if key != "Rig"}


def inspect_image(image: Doc) -> Doc:
    return {
        "Id": image["id"],
        "RepoTags": [f"{image['repo']}:{tag}" for tag in image["tags"]],
        "RepoDigests": [f"{image['repo']}@{image['digest']}"],
    }


def human_duration(seconds: float) -> str:
    """Docker's (go-units) HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def ps_row(record: Doc) -> Doc:
    """One container as ``docker ps --format '{{json .}}'`` prints it (keys sorted, as Go does)."""
    now, state = time.time(), record["State"]
    if state["Running"]:
        status = f"Up {human_duration(now - _epoch(state['StartedAt']))}"
    elif state["Status"] == "exited":
        ago = human_duration(now - _epoch(state["FinishedAt"]))
        status = f"Exited ({state['ExitCode']}) {ago} ago"
    else:
        status = state["Status"].capitalize()
    rig = record["Rig"]
    ports = (
        f"{rig['host']}:{rig['port']}->{rig['port']}/tcp"
        if record["HostConfig"]["PortBindings"]
        else ""
    )
    labels = record["Config"]["Labels"]
    command = " ".join(record["Config"]["Cmd"]) or "python3 -m vllm.entrypoints.openai.api_server"
    return {
        "Command": f'"{_ellipsis(command, 20)}"',
        "CreatedAt": time.strftime(
            "%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(_epoch(record["Created"]))
        ),
        "ID": record["Id"][:12],
        "Image": record["Config"]["Image"],
        "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
        "LocalVolumes": "0",
        "Mounts": "",
        "Names": record["Name"].lstrip("/"),
        "Networks": record["HostConfig"]["NetworkMode"],
        "Ports": ports,
        "RunningFor": f"{human_duration(now - _epoch(record['Created']))} ago",
        "Size": "0B",
        "State": state["Status"],
        "Status": status,
    }


def ps_table(rows: list[Doc]) -> str:
    columns = [
        ("CONTAINER ID", "ID"),
        ("IMAGE", "Image"),
        ("COMMAND", "Command"),
        ("CREATED", "RunningFor"),
        ("STATUS", "Status"),
        ("PORTS", "Ports"),
        ("NAMES", "Names"),
    ]
    table = [[title for title, _ in columns]] + [[row[key] for _, key in columns] for row in rows]
    # Go's tabwriter as docker sets it up: cells padded by 3, columns at least 10 wide.
    widths = [max(max(len(line[i]) for line in table) + 3, 10) for i in range(len(columns))]
    lines = [
        "".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    return "\n".join(lines) + "\n"


def label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def go_json(value: Any, *, indent: bool = False) -> str:
    text = json.dumps(
        value,
        ensure_ascii=False,
        indent=4 if indent else None,
        separators=None if indent else (",", ":"),
    )
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _go_str(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_str(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    return str(value)


def _field(value: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        if not part:
            continue
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _action(expression: str, record: Doc) -> str:
    words = expression.split()
    if words[0] == "json" and len(words) == 2:
        return go_json(_field(record, words[1]))
    if words[0] == "index" and len(words) >= 3:
        value = _field(record, words[1])
        for key in words[2:]:
            key = key.strip('"')
            try:
                value = value[int(key)] if isinstance(value, list) else value[key]
            except (IndexError, KeyError, TypeError, ValueError):
                raise ValueError(
                    f"template: :1: executing at <index {words[1]} {key}>: error calling index"
                ) from None
        return _go_str(value)
    if words[0] == "slice" and len(words) in (3, 4):
        value = _field(record, words[1])
        bounds = [int(w) for w in words[2:]]
        if not isinstance(value, str) or not 0 <= bounds[0] <= bounds[-1] <= len(value):
            raise ValueError(
                f"template: :1: executing at <slice {words[1]}>: error calling slice: "
                "index out of range"
            )
        return value[bounds[0] : bounds[1]] if len(bounds) == 2 else value[bounds[0] :]
    if len(words) == 1 and words[0].startswith("."):
        return _go_str(_field(record, words[0]))
    raise ValueError(f'template: :1: function "{words[0]}" not defined')


def render_template(template: str, record: Doc) -> str:
    """Render the Go-template subset docker users reach for; raises ValueError like Go does."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    return _ACTION.sub(lambda match: _action(match.group(1), record), template)
