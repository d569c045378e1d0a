"""A real nginx load balancer on one node of the rig, run as the fleet's login user.

``NginxBalancer(fleet, "lb-1", service="chat", members=["127.0.1.1:8000"])`` writes, in a
directory of its own under ``fleet.dir`` owned by the login user, a main config and the
service's upstream file, and runs nginx listening on the LB node's address (port 8080).
Every path nginx writes (pid, logs, temp dirs, lock) is in that directory, so the login
user over SSH can do exactly what a runbook does on a real balancer: ``cat`` the upstream
file, replace it (``cat > F.reliability-new && mv -f F.reliability-new F``), ``nginx -t -c
CONF`` and ``nginx -c CONF -s reload``.

nginx runs in the foreground (``daemon off``) as a child of the test process, in a
process group of its own and with a parent-death signal, so ``stop()`` (or a killed test
run) ends the master and every worker, old generations included.

The proxy is set up for LLM traffic: HTTP/1.1 to the members, no buffering (tokens reach
the client as they are streamed), hour-long read timeouts, and a failed connect, timeout,
502 or 503 tried on the next member (at most ``PROXY_TRIES`` in all). ``GET /`` exactly is
the members' ``/health``, so the ``url`` a runbook checks answers 200 while one serves.
Every answer carries ``x-upstream-addr``: the member(s) nginx tried.
"""

from __future__ import annotations

import time
from pathlib import Path

from reliability.balancers.nginx import read_upstream
from reliability.testing.balancer import (
    COMMAND_TIMEOUT_S,
    DEFAULT_PORT,
    PROXY_TRIES,
    READY_TIMEOUT_S,
    RELOAD_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BalancerError,
    Member,
    RigBalancer,
    children,
    title,
)

NGINX = "/usr/sbin/nginx"
__all__ = [
    "COMMAND_TIMEOUT_S",
    "DEFAULT_PORT",
    "NGINX",
    "PROXY_TRIES",
    "READY_TIMEOUT_S",
    "RELOAD_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Member",
    "NginxBalancer",
    "NginxError",
    "main_config",
    "missing_requirement",
    "parse_members",
]


class NginxError(BalancerError):
    """nginx cannot be set up, started or reloaded here; says why (with its log)."""


def missing_requirement() -> str | None:
    """None when a balancer can start on this machine, else what is missing."""
    return NginxBalancer.missing_requirement()


def parse_members(text: str) -> list[Member]:
    """The ``server`` lines of an upstream file: ("address:port", down), in order."""
    membership = read_upstream(text)
    return [(s.address, s.down) for s in membership.servers]


def main_config(
    *, directory: Path, upstream_file: Path, service: str, address: str, port: int, workers: int
) -> str:
    """The main nginx config: everything nginx writes stays in ``directory``."""
    d = directory
    return f"""\
# The rig's load balancer (reliability/testing/nginx.py). Runs as the login user.
error_log {d}/error.log notice;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
daemon off;
master_process on;
worker_processes {workers};

events {{
    worker_connections 1024;
}}

http {{
    log_format rig '$remote_addr "$request" $status $body_bytes_sent '
                   'upstream=$upstream_addr upstream_status=$upstream_status '
                   'time=$request_time worker=$pid';
    access_log {d}/access.log rig;
    client_body_temp_path {d}/temp/client_body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 1m;

    include {upstream_file};

    server {{
        listen {address}:{port};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_connect_timeout 2s;
        proxy_send_timeout 3600s;
        proxy_read_timeout 3600s;
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries {PROXY_TRIES};
        proxy_next_upstream_timeout 10s;
        add_header x-upstream-addr $upstream_addr always;

        # The url a runbook checks: 200 while a member serves.
        location = / {{
            proxy_pass http://{service}/health;
        }}
        location / {{
            proxy_pass http://{service};
        }}
    }}
}}
"""


class NginxBalancer(RigBalancer):
    """nginx on ``node`` of a started ``fleet``, balancing ``service``; a context manager."""

    kind = "nginx"
    binary = NGINX
    error = NginxError

    def __enter__(self) -> NginxBalancer:
        return self.start()

    def start(self) -> NginxBalancer:
        """Write the files, check the config as the login user, run nginx until it serves."""
        super().start()
        return self

    @property
    def config_file(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def upstream_file(self) -> Path:
        return self.dir / f"upstream-{self.service}.conf"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def main_config(self) -> str:
        return main_config(
            directory=self.dir,
            upstream_file=self.upstream_file,
            service=self.service,
            address=self.address,
            port=self.port,
            workers=self.workers,
        )

    def _make_dirs(self) -> None:
        (self.dir / "temp").mkdir()

    def launch_args(self) -> list[str]:
        return ["-c", str(self.config_file)]

    def _log_files(self) -> list[Path]:
        return [self.dir / "nginx.out", self.error_log]

    def _workers(self) -> list[tuple[int, bool]]:
        master = self.pid
        if master is None:
            return []
        return [(pid, "shutting down" not in title(pid)) for pid in children(master)]

    def check_config(self) -> None:
        """``nginx -t -c CONF`` as the login user; NginxError with its output if it fails."""
        done = self.run_as_user("-t", "-c", str(self.config_file))
        if done.returncode != 0:
            raise NginxError(f"nginx -t failed ({done.returncode}):\n{done.stderr.strip()}")

    def reload(self) -> float:
        """``nginx -c CONF -s reload`` as the login user, then wait until new workers serve;
        the seconds that took. NginxError if nginx refused the configuration."""
        before = set(self.serving_worker_pids())
        started = time.monotonic()
        done = self.run_as_user("-c", str(self.config_file), "-s", "reload")
        if done.returncode != 0:
            raise NginxError(f"nginx -s reload failed ({done.returncode}):\n{done.stderr.strip()}")
        if not self.wait_reloaded(before):
            raise NginxError(f"nginx kept its old workers after a reload:\n{self.log()}")
        return time.monotonic() - started
