"""`reliability cluster status`: the daemons of this database, the leader, the last
rebalance. Ages are the database server's, as the daemons themselves judge liveness.
Exit 1 when no daemon is live (nothing watches the fleet)."""

from __future__ import annotations

import click
from rich.table import Table

from reliability.cli_support import (
    CommandFailed,
    config_option,
    console,
    database,
    json_option,
    print_json,
)
from reliability.cluster import service
from reliability.config import Config

SINGLE = "SQLite: single daemon (one member, always the leader, every target its own)"


@click.group()
def cluster() -> None:
    """Several daemons on one PostgreSQL database: members, leader, shares."""


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{max(0.0, seconds):.1f}s ago"


@cluster.command("status")
@config_option
@json_option
def status(config: Config, as_json: bool) -> None:
    """Members (id, host, HTTP address, leader, last heartbeat, targets held) and the last
    rebalance."""
    from reliability import db

    lease_s = config.cluster.lease
    if db.normalize_url(config.database_url()).get_backend_name() != "postgresql":
        if as_json:
            print_json({"backend": "sqlite", "single_daemon": True, "members": []})
        else:
            console.print(SINGLE)
        return
    with database(config) as s:
        members = service.members(s)
        lease = service.lease(s)
    leading = lease.holder if lease and (lease.expires_in or 0) > 0 else None
    live = [m for m in members if m.age < lease_s]
    if as_json:
        print_json(
            {
                "backend": "postgresql",
                "members": [
                    {
                        "member_id": m.member_id,
                        "host": m.host,
                        "http": m.http,
                        "pid": m.pid,
                        "live": m.age < lease_s,
                        "leader": m.member_id == leading,
                        "heartbeat_age_s": round(m.age, 3),
                        "targets": list(m.targets),
                    }
                    for m in members
                ],
                "leader": leading,
                "epoch": lease.epoch if lease else None,
                "last_rebalance": None
                if lease is None or lease.rebalanced_at is None
                else {"at": lease.rebalanced_at, "members": list(lease.members)},
            }
        )
    else:
        table = Table(box=None, header_style="bold")
        for col in ("MEMBER", "HOST", "HTTP", "LEADER", "HEARTBEAT", "TARGETS"):
            table.add_column(col, overflow="fold")
        for m in members:
            beat = _ago(m.age) if m.age < lease_s else f"gone ({_ago(m.age)})"
            leader = "yes" if m.member_id == leading else ""
            table.add_row(m.member_id, m.host, m.http, leader, beat, str(len(m.targets)))
        console.print(table)
        if lease is not None and leading is not None:
            console.print(f"leader: {leading} (epoch {lease.epoch})")
        else:
            console.print("leader: none (the lease is free or expired)")
        if lease is not None and lease.rebalanced_at is not None:
            console.print(
                f"last rebalance: {_ago(lease.rebalanced_ago)} "
                f"({lease.rebalanced_at:%Y-%m-%d %H:%M:%SZ}), members "
                f"{', '.join(lease.members) or 'none'}"
            )
    if not live:
        raise CommandFailed("no daemon is live on this database: nothing watches the fleet")
