"""The fleet table (database only): seed it from the config, read it, change a node's state.

`seed` adds a row for each fleet node the table does not know yet (first start, or a node
added to the config later) and leaves known nodes alone: once a node has a row, the table
wins over the config. Racing seeders insert each node once (`ON CONFLICT DO NOTHING`).
`set_state` is a compare-and-set: given what the caller saw (`expect`), it changes the
node only if it is still so, so two runs can never take the same standby.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from reliability.config import Config, NodeState
from reliability.fleet.models import FleetNode, State

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class UnknownNode(LookupError):
    """No node of that name is in the fleet."""


class StateChanged(RuntimeError):
    """The node is no longer in the state the caller saw: someone else changed it."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What a caller saw of a node before changing it: its state and pool."""

    state: NodeState
    pool: str | None


def seed(session: Session, *, config: Config, now: datetime) -> None:
    """Add the config's fleet nodes the table does not know yet, as the config has them."""
    rows = []
    for node in config.nodes:
        state = node.first_state
        if state is None:
            continue
        service = config.pool_service(node.pool) if node.pool else None
        rows.append(
            {
                "node": node.name,
                "state": State(state),
                "service": service.name if service else None,
                "pool": node.pool,
                "since": now,
                "by": "config",
                "run_id": None,
                "reason": None,
            }
        )
    if not rows:
        return
    insert = _INSERTS[session.connection().dialect.name]
    session.execute(insert(FleetNode).values(rows).on_conflict_do_nothing(index_elements=["node"]))


def nodes(session: Session, *, config: Config) -> list[FleetNode]:
    """Every node of the fleet, in the config's order (rows of nodes since removed from the
    config last)."""
    order = {n.name: i for i, n in enumerate(config.nodes)}
    rows = session.scalars(sa.select(FleetNode)).all()
    return sorted(rows, key=lambda r: (order.get(r.node, len(order)), r.node))


def get(session: Session, *, node: str) -> FleetNode:
    row = session.get(FleetNode, node)
    if row is None:
        raise UnknownNode(node)
    return row


def set_state(
    session: Session,
    *,
    node: str,
    state: NodeState,
    service: str | None,
    pool: str | None,
    reason: str | None,
    by: str,
    at: datetime,
    run_id: int | None = None,
    expect: Seen | None = None,
) -> FleetNode:
    """Put `node` in `state` (serving `pool` of `service`); with `expect`, only if it is
    still as the caller saw it (StateChanged otherwise). UnknownNode if it has no row."""
    where = [FleetNode.node == node]
    if expect is not None:
        where += [
            FleetNode.state == State(expect.state),
            FleetNode.pool.is_not_distinct_from(expect.pool),
        ]
    changed = session.execute(
        sa.update(FleetNode)
        .where(*where)
        .values(
            state=State(state),
            service=service,
            pool=pool,
            reason=reason,
            by=by,
            since=at,
            run_id=run_id,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed == 0:
        row = get(session, node=node)  # UnknownNode when there is no such node
        was = f"{expect.state} {expect.pool or ''}".strip() if expect else "?"
        now_ = f"{row.state.value} {row.pool or ''}".strip()
        raise StateChanged(
            f"{node} was {was} when the run was planned and is {now_} now "
            f"(since {row.since:%H:%M:%S}Z, by {row.by}); plan again"
        )
    row = get(session, node=node)
    session.refresh(row)
    return row
