"""Where each service's public traffic goes now: its balancer's route file (deploy/nginx/)
compared byte for byte with the two prepared variants, by one SSH command on the
balancer's node per cycle.

`reliability_service_route{service, route}` is 1 for the side in force (`hosted`, `local`,
or `other`: the file is neither variant, edited by hand) and 0 for the others. It is read
from the balancer, not from the runs that changed it, so a swap by hand counts too.
Detection's `upstream-recovered` asks whether traffic can go back to the hosted API only
while this says `local`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from reliability import catalog
from reliability.collect.base import CollectError, Sample
from reliability.ssh import SshError, SshPool, SshTarget

ROUTES = ("hosted", "local", "other")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A service's route file and its variants, on the balancer's node `target`."""

    service: str
    target: SshTarget
    file: str
    hosted: str
    local: str


def route_command(spec: RouteSpec) -> str:
    """Prints which variant the route file is; fails when the route file cannot be read
    (a missing file is no route, not `other`)."""
    file, hosted, local = (shlex.quote(p) for p in (spec.file, spec.hosted, spec.local))
    return (
        f"test -r {file} || {{ echo {shlex.quote('cannot read ' + spec.file)} >&2; exit 2; }}; "
        f"if cmp -s {file} {local}; then echo local; "
        f"elif cmp -s {file} {hosted}; then echo hosted; else echo other; fi"
    )


class RouteCollector:
    """Collector `route`: one target per service with a route."""

    name = "route"

    def __init__(self, pool: SshPool, specs: Sequence[RouteSpec], *, timeout: float) -> None:
        self._pool = pool
        self._specs = {s.service: s for s in specs}
        self._timeout = timeout

    def targets(self) -> Sequence[str]:
        return list(self._specs)

    def collect(self, target: str) -> Sequence[Sample]:
        spec = self._specs[target]
        try:
            result = self._pool.run(spec.target, route_command(spec), timeout=self._timeout)
        except SshError as e:
            raise CollectError(e.reason, f"route of {target}: {e}") from e
        route = result.stdout.strip()
        if result.exit_status != 0 or route not in ROUTES:
            detail = (result.stderr.strip() or result.stdout.strip())[:200]
            raise CollectError("bad_output", f"route of {target}: {detail!r}")
        return [
            Sample(catalog.SERVICE_ROUTE, (target, side), float(side == route)) for side in ROUTES
        ]
