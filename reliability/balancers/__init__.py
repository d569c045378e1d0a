"""Load balancers behind one seam (base.Balancer): nginx and HAProxy.

Core-ish: imports the config and the standard library only. `for_config(lb)` gives the
balancer of a configured `load_balancer`; a new kind is one module and one `by_kind`
entry (and its name in `LoadBalancerConfig.kind`).
"""

from reliability.balancers.base import (
    Balancer,
    Edit,
    Membership,
    MembershipError,
    Server,
)
from reliability.balancers.haproxy import HAProxy
from reliability.balancers.nginx import Nginx
from reliability.config import LoadBalancerConfig

by_kind: dict[str, type[Balancer]] = {"nginx": Nginx, "haproxy": HAProxy}


def for_config(lb: LoadBalancerConfig) -> Balancer:
    """The balancer that drives `lb` (its kind's file format and commands)."""
    return by_kind[lb.kind](lb)


__all__ = [
    "Balancer",
    "Edit",
    "HAProxy",
    "Membership",
    "MembershipError",
    "Nginx",
    "Server",
    "by_kind",
    "for_config",
]
