"""Alertmanager for tests and benchmarks: its webhook payloads, and the real binary.

``webhook_payload([alert_payload(...), ...])`` builds what Alertmanager's webhook receiver
POSTs (version 4, as notify/webhook/webhook.go and template.Data write it), for tests and the
benchmark that cannot wait for Alertmanager's grouping delays. ``Alertmanager`` runs the real
Debian binary on loopback, routing every alert to one webhook URL::

    with Alertmanager(tmp_path, daemon_url + PATH, token="t") as am:
        am.post_alerts([{"labels": {"alertname": "GpuHot"}}])

or loading a whole config of the caller's (``Alertmanager(tmp_path, config=..., ...)``,
e.g. deploy/alertmanager/alertmanager.yml with its URLs and files pointed at the rig).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from reliability.testing.loopback import free_port

BINARY_NAMES = ("prometheus-alertmanager", "alertmanager")
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_payload(
    fingerprint: str,
    *,
    status: str = "firing",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> dict[str, Any]:
    """One alert of a webhook; a firing one has Go's zero time as its end, as Alertmanager
    sends it. `fingerprint` is 16 hex digits (see `fingerprint_of`)."""
    starts_at = starts_at or datetime.now(UTC)
    return {
        "status": status,
        "labels": dict(labels or {"alertname": "GpuHot", "severity": "warning"}),
        "annotations": dict(annotations or {}),
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at) if ends_at else GO_ZERO_TIME,
        "generatorURL": "http://prometheus.invalid/graph",
        "fingerprint": fingerprint,
    }


def fingerprint_of(n: int) -> str:
    """A fingerprint in Alertmanager's format ("%016x") for the n-th test alert."""
    return f"{n:016x}"


def webhook_payload(
    alerts: Sequence[Mapping[str, Any]], *, receiver: str = "reliability"
) -> dict[str, Any]:
    """The webhook body around `alerts`: group status, common labels and annotations derived
    as Alertmanager derives them."""
    labels = [a["labels"] for a in alerts]
    annotations = [a["annotations"] for a in alerts]
    return {
        "version": "4",
        "groupKey": '{}:{alertname="GpuHot"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": "GpuHot"},
        "commonLabels": _common(labels),
        "commonAnnotations": _common(annotations),
        "externalURL": "http://alertmanager.invalid:9093",
        "alerts": [dict(a) for a in alerts],
    }


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    return {k: v for k, v in maps[0].items() if all(m.get(k) == v for m in maps[1:])}


def binary() -> str | None:
    """The Alertmanager binary on PATH (Debian names it prometheus-alertmanager), or None."""
    return next((path for name in BINARY_NAMES if (path := shutil.which(name))), None)


class Alertmanager:
    """The real Alertmanager on free loopback ports, clustering off, state in `directory`,
    sending every alert (and its resolution) to `webhook_url` with `token` as bearer, or
    as `config` (a whole alertmanager.yml, as a mapping) says.

    Grouping delays are short (`group_wait`, `group_interval`) so a test sees a firing
    within a second and a resolution within about `group_interval`.
    """

    def __init__(
        self,
        directory: Path,
        webhook_url: str = "",
        *,
        token: str = "",
        executable: str,
        group_wait: str = "100ms",
        group_interval: str = "1s",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._executable = executable
        self._config = config or {
            "route": {
                "receiver": "reliability",
                "group_by": ["alertname"],
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "reliability",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"credentials": token}},
                        }
                    ],
                }
            ],
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=5.0)

    def __enter__(self) -> Alertmanager:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, start the process and wait until it answers `/-/ready`."""
        config = self.directory / "alertmanager.yml"
        config.write_text(yaml.safe_dump(self._config, sort_keys=False))
        (self.directory / "data").mkdir(exist_ok=True)
        with (self.directory / "alertmanager.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self._executable,
                    f"--config.file={config}",
                    f"--storage.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",  # empty: no gossip port, no peers
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if self._client.get("/-/ready").status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Alertmanager did not become ready; its log:\n{self.log()}")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """POST /api/v2/alerts, as Prometheus does; raises on a refusal."""
        self._client.post("/api/v2/alerts", json=alerts).raise_for_status()

    def log(self) -> str:
        path = self.directory / "alertmanager.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self._client.close()
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
