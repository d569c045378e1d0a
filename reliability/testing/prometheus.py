"""A real Prometheus server (Debian `prometheus`) on loopback, for tests that query it.

``with PrometheusServer(tmp_path, targets=["127.0.0.1:9100"], rules=path) as prom:``
starts ``/usr/bin/prometheus`` on a free 127.0.0.1 port with a 1 s scrape interval of
each target's ``/metrics`` (job ``reliability``) and the rules file loaded, waits until it
answers, and stops it on exit. ``scrape_configs`` adds jobs of its own (other servers,
target labels such as the ``pool`` of a serving engine); ``alertmanagers`` (host:port)
are sent the firing alerts. A missing binary skips the test locally and fails it in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from reliability.testing.loopback import free_port
from reliability.testing.services import service_missing

SCRAPE_INTERVAL = "1s"
START_WITHIN_S = 20.0


def binary() -> str:
    """The prometheus executable; skips (locally) or fails (in CI) the test if missing."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        service_missing("prometheus (Debian package prometheus) not installed")
    assert found is not None
    return found


class PrometheusError(RuntimeError):
    """Prometheus did not start, or a query failed."""


class PrometheusServer:
    """One Prometheus process scraping ``targets`` (host:port) every second."""

    def __init__(
        self,
        directory: Path,
        targets: Sequence[str],
        rules: Path | None = None,
        scrape_configs: Sequence[dict[str, Any]] = (),
        alertmanagers: Sequence[str] = (),
    ):
        self.directory = directory
        self.targets = list(targets)
        self.rules = rules
        self.scrape_configs = list(scrape_configs)
        self.alertmanagers = list(alertmanagers)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # One client for every query: a new one loads the CA bundle each time (tens of ms,
        # hundreds of queries in the dashboard test).
        self._http = httpx.Client(timeout=10.0)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "reliability", "static_configs": [{"targets": self.targets}]},
                *self.scrape_configs,
            ],
        }
        if self.rules is not None:
            config["rule_files"] = [str(self.rules)]
        if self.alertmanagers:
            targets = [{"targets": self.alertmanagers}]
            config["alerting"] = {"alertmanagers": [{"static_configs": targets}]}
        return config

    def start(self) -> PrometheusServer:
        executable = binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited ({self._proc.returncode}): {self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready within {START_WITHIN_S}s: {self.log}")

    def stop(self) -> None:
        self._http.close()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query's result vector (a scalar or string comes back as one item)."""
        response = self._http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])

    def rules_loaded(self) -> list[dict[str, Any]]:
        """Every rule Prometheus loaded, as /api/v1/rules lists them."""
        body = self._http.get(f"{self.url}/api/v1/rules").json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]
