"""The real daemon against a rig balancer's fleet, for tests and benchmarks of detection.

``node_config`` writes a config for a ``RigBalancer`` (the ``rig_lb`` fleet: service
``chat`` over pool blue, ``spare-1`` a standby, ``lb-1`` the balancer) with node
collection every second; ``DaemonProcess`` runs ``python -m reliability daemon`` on it in
a process of its own; ``Watch`` reads what it recorded (incidents, runbook runs) straight
from its SQLite database, cheaply enough to poll every few milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from reliability import catalog, db
from reliability.incidents.models import Incident
from reliability.runbooks.models import RunbookRun
from reliability.testing.balancer import RigBalancer
from reliability.testing.rigconfig import rig_config
from reliability.testing.waiting import wait_for

STOP_TIMEOUT_S = 30.0


def node_config(
    balancer: RigBalancer,
    directory: Path,
    *,
    auto: tuple[str, ...] = ("node-failover",),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    port: int = 0,
) -> Path:
    """The daemon's config for the balancer's fleet (GPU rules quiet: no GPUs), its
    database migrated; ``overrides``: `rules.overrides` (rule -> fields); ``port``: where
    it serves /metrics (0: anywhere)."""
    return rig_config(
        balancer,
        directory,
        service={"auto_runbooks": list(auto), "auto_cooldown": "0s"},
        gpus=False,
        http={"listen": f"127.0.0.1:{port}"},
        collect={"node_interval": 1, "gpu_interval": 1, "timeout": 0.9},
        rules={"overrides": {k: dict(v) for k, v in (overrides or {}).items()}},
    )


class DaemonProcess:
    """`reliability daemon -c CONFIG` in its own process; a context manager whose exit
    stops it (SIGTERM) and keeps what it printed in ``output``."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.output = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reliability", "daemon", "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_probing(self, port: int, nodes: list[str], timeout: float = 60.0) -> None:
        """Until /metrics on ``port`` shows every node's sshd port answering the probe."""

        def probing() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
            except httpx.HTTPError:
                return False
            up = catalog.NODE_LIVENESS_UP.name
            return all(f'{up}{{node="{n}",signal="ssh"}} 1.0' in text for n in nodes)

        wait_for("the daemon probing every node", probing, timeout, every=0.2)

    def stop(self) -> str:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                self.output, _ = self.proc.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output, _ = self.proc.communicate(timeout=STOP_TIMEOUT_S)
        return self.output


class Watch:
    """What the daemon recorded, read from its database."""

    def __init__(self, config: Path) -> None:
        data = yaml.safe_load(config.read_text())
        self.engine = db.make_engine(data["database"]["url"])

    def open_incidents(self) -> dict[tuple[str, str], Incident]:
        """(rule, node) -> the unresolved rule incident."""
        with db.session_factory(self.engine)() as s:
            rows = s.scalars(sa.select(Incident).where(Incident.resolved_at.is_(None))).all()
        out = {}
        for row in rows:
            rule = row.fingerprint.removeprefix("rule:").split("{", 1)[0]
            out[(rule, row.labels.get("node", ""))] = row
        return out

    def runs(self) -> list[RunbookRun]:
        with db.session_factory(self.engine)() as s:
            return list(s.scalars(sa.select(RunbookRun).order_by(RunbookRun.id)).all())

    def close(self) -> None:
        self.engine.dispose()
