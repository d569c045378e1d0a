"""`reliability images ...`: the deploy history per service and the known-good digests."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from reliability.cli_support import (
    BadInput,
    config_option,
    console,
    database,
    json_option,
    print_json,
    who,
)
from reliability.config import Config
from reliability.images import service


@click.group()
def images() -> None:
    """Known-good images: every deploy, and the digests rollbacks and failovers use."""


def _service(config: Config, name: str) -> None:
    if name not in {s.name for s in config.services}:
        known = ", ".join(s.name for s in config.services) or "none"
        raise BadInput(f"no service is named {name!r} in the config; services: {known}")


@images.command("list")
@click.option("--service", "service_name", default=None, help="One service only.")
@click.option("--limit", type=int, default=50, show_default=True, help="Deploys shown.")
@config_option
@json_option
def list_(config: Config, service_name: str | None, limit: int, as_json: bool) -> None:
    """Known-good digests per service (the newest is used), then the deploy history."""
    if service_name is not None:
        _service(config, service_name)
    with database(config) as s:
        good = service.known_good_rows(s, service=service_name)
        deploys = service.deploys(s, service=service_name, limit=limit)
        good_digests = {(g.service, g.digest) for g in good}
        current = {}
        for svc in config.services:
            if service_name in (None, svc.name):
                try:
                    current[svc.name] = service.known_good(s, service=svc)
                except service.NoKnownGood:
                    current[svc.name] = None
    if as_json:
        print_json(
            {
                "known_good": current,
                "marked": [
                    {
                        k: getattr(g, k)
                        for k in ("service", "image", "digest", "since", "by", "reason")
                    }
                    for g in good
                ],
                "deploys": [
                    {
                        **{k: getattr(d, k) for k in ("service", "node", "image", "digest")},
                        "deployed_at": d.deployed_at,
                        "run_id": d.run_id,
                        "known_good": (d.service, d.digest) in good_digests,
                    }
                    for d in deploys
                ],
            }
        )
        return
    for name, image in current.items():
        console.print(
            f"{name}: known-good image {image or 'none (mark one with images mark-good)'}"
        )
    table = Table(box=None, header_style="bold", title="Deploys, newest first")
    for col in ("DEPLOYED", "SERVICE", "NODE", "DIGEST", "GOOD", "RUN"):
        table.add_column(col, overflow="fold")
    for d in deploys:
        table.add_row(
            f"{d.deployed_at:%Y-%m-%d %H:%M}Z",
            d.service,
            d.node,
            d.digest[:19] + "…",
            "yes" if (d.service, d.digest) in good_digests else "",
            str(d.run_id or ""),
        )
    if deploys:
        console.print(table)
    else:
        console.print("No deploys recorded yet.")


@images.command("mark-good")
@click.argument("service_name", metavar="SERVICE")
@click.argument("image")
@click.option("--reason", default=None, help="Why, for whoever reads the history.")
@click.option("--by", default=who, help="Who marks it (default: your user name).")
@config_option
@json_option
def mark_good(
    config: Config, service_name: str, image: str, reason: str | None, by: str, as_json: bool
) -> None:
    """Mark IMAGE (REF@sha256:…) known-good for SERVICE: failovers and rollbacks deploy it."""
    _service(config, service_name)
    try:
        service.digest_of(image)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    with database(config) as s:
        row = service.mark_good(
            s, service=service_name, image=image, by=by, at=datetime.now(UTC), reason=reason
        )
    if as_json:
        print_json({"service": row.service, "image": row.image, "since": row.since, "by": row.by})
        return
    since = f"{row.since:%Y-%m-%d %H:%M}Z"
    console.print(f"{service_name}: {row.image} is known-good (since {since}, by {row.by})")


@images.command("record")
@click.argument("service_name", metavar="SERVICE")
@click.argument("ref", metavar="REF")
@click.option(
    "--node",
    "nodes",
    metavar="NODE",
    multiple=True,
    help="A node it was deployed on (repeat for several); default: every node of the "
    "service's pools.",
)
@config_option
@json_option
def record(
    config: Config, service_name: str, ref: str, nodes: tuple[str, ...], as_json: bool
) -> None:
    """Record that REF (REF@sha256:…) was deployed for SERVICE, as a pipeline does after a
    deploy of its own: it soaks and becomes known-good like a runbook's deploy."""
    _service(config, service_name)
    try:
        service.digest_of(ref)
    except ValueError as exc:
        raise BadInput(
            f"{exc}; record the digest the registry gave, e.g. `docker inspect --format "
            "'{{index .RepoDigests 0}}' IMAGE` on the node"
        ) from None
    svc = next(s for s in config.services if s.name == service_name)
    mine = [n.name for n in config.nodes if n.pool in svc.pools]
    wrong = [n for n in nodes if n not in mine]
    if wrong:
        raise BadInput(
            f"--node {', '.join(wrong)}: not a node of {service_name}'s pools "
            f"({', '.join(svc.pools)}); its nodes: {', '.join(mine) or 'none'}"
        )
    targets = list(dict.fromkeys(nodes)) or mine
    if not targets:
        raise BadInput(f"service {service_name} has no node in its pools to record REF on")
    at = datetime.now(UTC)
    with database(config) as s:
        rows = [
            service.record_deploy(s, service=service_name, node=n, image=ref, at=at, run_id=None)
            for n in targets
        ]
        shown = [{"service": r.service, "node": r.node, "image": r.image, "digest": r.digest,
                  "deployed_at": r.deployed_at} for r in rows]  # fmt: skip
    if as_json:
        print_json(shown)
        return
    console.print(
        f"{service_name}: {ref} recorded as deployed on {', '.join(targets)}; it becomes "
        f"known-good after {svc.soak:g}s without an incident"
    )
