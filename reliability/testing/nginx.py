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
502 or 503 tried on the next member (at most ``PROXY_TRIES`` in all). Every path goes to
the members as it is: ``GET /`` answers what the engine's ``/`` does (404), so a runbook
verifies through ``health_url`` (``/health``), as on a real balancer. Every answer carries
``x-upstream-addr``: the member(s) nginx tried.

The upstream file is the kind an operator keeps: each server line with a weight and
failure limits, a comment, ``zone`` and ``keepalive``, and a second upstream no runbook may
touch (``UNRELATED``); runbooks must edit the service's server lines and keep the rest.

With ``hosted`` (a ``HostedApi``: the TLS hosted-API stand-in), the balancer is set up as
deploy/nginx/ ships it: ``/v1/`` includes the route file, a copy of one of two variants
made from deploy/nginx's own files (the hosted API over verified TLS with SNI, ``Host`` and
the API key from a mode-600 include; or the pool's upstream), so the runbooks'
``lb_route`` swaps real traffic between the hosted API and the pool.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from reliability.balancers.nginx import read_upstreams
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
    as_member,
    children,
    title,
)

NGINX = "/usr/sbin/nginx"
UNRELATED = "rig-unrelated"  # the upstream file's second upstream
DEPLOY_NGINX = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
# What deploy/nginx's example files name, and what the rig puts in their place.
EXAMPLE_SERVICE = "chat"
EXAMPLE_DIR = "/etc/nginx/reliability/"
EXAMPLE_HOST = "api.example.com"
EXAMPLE_CA = "/etc/ssl/certs/ca-certificates.crt"
EXAMPLE_KEY = "sk-REPLACE-WITH-THE-HOSTED-API-KEY"
Route = Literal["hosted", "local"]
__all__ = [
    "COMMAND_TIMEOUT_S",
    "DEFAULT_PORT",
    "NGINX",
    "PROXY_TRIES",
    "READY_TIMEOUT_S",
    "RELOAD_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "UNRELATED",
    "HostedApi",
    "Member",
    "NginxBalancer",
    "NginxError",
    "main_config",
    "missing_requirement",
    "parse_members",
    "upstream_file",
]


class NginxError(BalancerError):
    """nginx cannot be set up, started or reloaded here; says why (with its log)."""


def missing_requirement() -> str | None:
    """None when a balancer can start on this machine, else what is missing."""
    return NginxBalancer.missing_requirement()


def parse_members(text: str, service: str = "chat") -> list[Member]:
    """The ``server`` lines of ``service``'s upstream: ("address:port", down), in order."""
    block = read_upstreams(text).get(service)
    if block is None:
        raise NginxError(f"no `upstream {service}` in:\n{text}")
    return [(s.server.address, s.server.down) for s in block.servers]


def upstream_file(service: str, members: Sequence[str | Member]) -> str:
    """The upstream file as an operator keeps it (see the module's docstring)."""
    lines = []
    for member in members:
        address, down = as_member(member)
        lines.append(
            f"    server {address} weight=2 max_fails=3 fail_timeout=5s{' down' if down else ''};\n"
        )
    return (
        "# The rig's upstreams, kept by hand: runbooks change server lines only.\n"
        f"upstream {service} {{\n"
        f"    zone {service} 64k;\n"
        "    # the serving pool; weights and failure limits are the operator's\n"
        f"{''.join(lines)}"
        "    keepalive 16;\n"
        "}\n"
        "\n"
        "# Another service on this balancer: no runbook of this one may touch it.\n"
        f"upstream {UNRELATED} {{\n"
        "    server 127.0.0.1:9 max_fails=0;  # nothing listens: never proxied to\n"
        "}\n"
    )


@dataclass(frozen=True)
class HostedApi:
    """The hosted API the service's public location can proxy to: where nginx connects
    (``address``, host:port), the name its certificate is for (SNI and ``Host``), its key,
    and the CA nginx trusts (None: none is named, and nginx refuses to start)."""

    address: str
    hostname: str
    api_key: str = field(repr=False)
    ca_file: Path | None = None


def route_files(service: str, hosted: HostedApi, directory: Path) -> dict[str, str]:
    """The route variants and the key's include, by file name, made from deploy/nginx's
    files with the rig's names, paths, hosted API and key in place of the example's."""

    def from_deploy(name: str) -> str:
        text = (DEPLOY_NGINX / name).read_text().replace(EXAMPLE_SERVICE, service)
        text = text.replace(EXAMPLE_DIR, f"{directory}/").replace(EXAMPLE_HOST, hosted.hostname)
        if hosted.ca_file is None:
            return "".join(line for line in text.splitlines(True) if EXAMPLE_CA not in line)
        return text.replace(EXAMPLE_CA, str(hosted.ca_file))

    auth = from_deploy("chat-hosted-auth.conf.example").replace(EXAMPLE_KEY, hosted.api_key)
    return {
        f"{service}-route-hosted.conf": from_deploy("chat-route-hosted.conf"),
        f"{service}-route-local.conf": from_deploy("chat-route-local.conf"),
        f"{service}-hosted-auth.conf": auth,
    }


def _hosted_blocks(service: str, hosted: HostedApi | None, route_file: Path) -> tuple[str, str]:
    """The hosted API's upstream block and the ``/v1/`` location (deploy/nginx/chat.conf)."""
    if hosted is None:
        return "", ""
    upstream = f"""
    upstream {service}_hosted {{
        server {hosted.address};
        keepalive 8;
    }}
"""
    location = f"""
        # The service's public API: the route file says where (deploy/nginx/chat.conf).
        location /v1/ {{
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            include {route_file};
        }}"""
    return upstream, location


def main_config(
    *,
    directory: Path,
    upstream_file: Path,
    service: str,
    address: str,
    port: int,
    workers: int,
    hosted: HostedApi | None = None,
) -> str:
    """The main nginx config: everything nginx writes stays in ``directory``."""
    d = directory
    hosted_upstream, hosted_location = _hosted_blocks(
        service, hosted, directory / f"{service}-route.conf"
    )
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
{hosted_upstream}    server {{
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

        location / {{
            proxy_pass http://{service};
        }}{hosted_location}
    }}
}}
"""


class NginxBalancer(RigBalancer):
    """nginx on ``node`` of a started ``fleet``, balancing ``service``; a context manager."""

    kind = "nginx"
    binary = NGINX
    error = NginxError

    def __init__(
        self,
        *args: Any,
        hosted: HostedApi | None = None,
        route: Route = "hosted",
        **options: Any,
    ) -> None:
        super().__init__(*args, **options)
        self.hosted = hosted
        self._route = route

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
    def route_file(self) -> Path:
        """The include that sends ``/v1/`` to the hosted API or the pool (with ``hosted``)."""
        return self.dir / f"{self.service}-route.conf"

    def route_variant(self, route: Route) -> Path:
        return self.dir / f"{self.service}-route-{route}.conf"

    def lb_config(self, service: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = super().lb_config(service)
        if self.hosted is not None:
            config["route"] = {
                "file": str(self.route_file),
                "hosted": str(self.route_variant("hosted")),
                "local": str(self.route_variant("local")),
            }
        return config

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def render(self, members: Sequence[str | Member]) -> str:
        return upstream_file(self.service, members)

    def main_config(self) -> str:
        return main_config(
            directory=self.dir,
            upstream_file=self.upstream_file,
            service=self.service,
            address=self.address,
            port=self.port,
            workers=self.workers,
            hosted=self.hosted,
        )

    def _make_dirs(self) -> None:
        (self.dir / "temp").mkdir()
        if self.hosted is None:
            return
        hosted = self.hosted
        if hosted.ca_file is not None:  # where nginx's user can read it
            ca = self.dir / "hosted-ca.pem"
            shutil.copyfile(hosted.ca_file, ca)
            hosted = replace(hosted, ca_file=ca)
        for name, text in route_files(self.service, hosted, self.dir).items():
            path = self.dir / name
            path.touch(mode=0o600 if name.endswith("-auth.conf") else 0o644)  # the key: 600
            path.write_text(text)
        self.route_file.write_bytes(self.route_variant(self._route).read_bytes())

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
