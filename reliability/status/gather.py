"""What `reliability status` shows, gathered from the daemon's `/metrics` and the database,
and what of it needs attention (the command's exit status).

It only reads. A daemon or database that does not answer is part of the status (one line
saying which URL and why), never an exception: the other half is still shown.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reliability import catalog, db
from reliability.cluster import service as cluster_service
from reliability.collect import base as collectors
from reliability.config import Config
from reliability.exposition import Exposition, Histogram
from reliability.fleet import service as fleet_service
from reliability.incidents import service as incident_service
from reliability.incidents.models import Incident, IncidentStatus, Severity
from reliability.oncall import service as oncall_service
from reliability.oncall.rotation import OnCall
from reliability.readapi import DaemonUnreachable
from reliability.runbooks import service as run_service
from reliability.runbooks.models import RunbookRun, RunStatus
from reliability.status.scrape import SCRAPE_TIMEOUT_S, LatencyWindow, fetch, metrics_url

# A run that failed (and was undone) this recently still asks for a look: what it was
# meant to fix is probably still broken.
RECENT_FAILURE = timedelta(hours=1)
RECENT_RUNS = 5  # ended runs shown beside the unended ones
INCIDENT_LIMIT = 100
QUANTILE = 0.95
SEVERITY_ORDER = {Severity.critical: 0, Severity.warning: 1, Severity.info: 2}
WAITING = (RunStatus.interrupted, RunStatus.undo_failed)
FAILED = (RunStatus.failed, RunStatus.aborted)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node as the daemon last saw it. `up` None: not collected (yet), or no daemon.
    `pool` and `role` are the fleet's live ones where the database has them (role: the
    node's state, e.g. a standby that took over is `serving` its pool, the failed node
    `out`), else the config's."""

    name: str
    pool: str | None
    role: str | None
    up: bool | None
    gpus_visible: int | None = None
    gpus_expected: int | None = None
    gpus_lost: int | None = None
    # The GPU collection of an up node failed (driver gone, nvidia-smi broken).
    gpu_collect_failed: bool = False
    # Seconds since the node last answered; set when it is down.
    down_for_seconds: float | None = None

    @property
    def state(self) -> str:
        return {True: "up", False: "down", None: "unknown"}[self.up]


@dataclass(frozen=True, slots=True)
class EndpointRow:
    name: str
    role: str | None
    service: str | None
    # Whether the endpoint's last probe succeeded (None: not probed yet, or no daemon).
    last_probe_ok: bool | None = None
    error_ratio: dict[str, float] = field(default_factory=dict)  # by window: 1m, 5m, each rule's
    overload_ratio: dict[str, float] = field(default_factory=dict)
    p95_seconds: dict[str, float | None] = field(default_factory=dict)  # by probe


@dataclass(frozen=True, slots=True)
class IncidentRow:
    id: int
    severity: Severity
    status: IncidentStatus
    title: str
    started_at: datetime
    acknowledged_by: str | None
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    runbook: str
    status: RunStatus
    step: str | None
    started_by: str
    started_at: datetime
    ended_at: datetime | None
    reason: str | None
    services: list[str]
    # Set for a `running` run whose heartbeat stopped: its process may be gone.
    no_heartbeat_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class NotifierFailure:
    """A permanent failure holding a notifier's pages back; `destination` None: all."""

    destination: str | None
    reason: str
    since: datetime


@dataclass(frozen=True, slots=True)
class NotifierRow:
    """A notifier as the daemon's dispatcher sees it: not `healthy` while `failures` hold."""

    name: str
    healthy: bool
    failures: list[NotifierFailure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DaemonRow:
    """A daemon whose `/metrics` the status read: `member` its cluster member id (None:
    no cluster, the config's `http.listen`), `error` why it did not answer (None: it did)."""

    member: str | None
    url: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FleetStatus:
    at: datetime
    # Every live member of the cluster, or the one daemon of the config.
    daemons: list[DaemonRow]
    database: str
    database_error: str | None
    nodes: list[NodeRow]
    endpoints: list[EndpointRow]
    incidents: list[IncidentRow]
    runs: list[RunRow]
    # Seconds the p95 figures cover; None: since the daemon started.
    latency_covers: float | None
    attention: list[str]
    notifiers: list[NotifierRow] = field(default_factory=list)
    on_call: list[OnCall] = field(default_factory=list)  # one per rotation of the config
    # Live daemons on the database as the scraped ones count them (cluster/); None: unknown.
    members: int | None = None

    @property
    def ok(self) -> bool:
        return not self.attention


@dataclass(frozen=True, slots=True)
class _Records:
    """What the status reads from the database, in one transaction."""

    incidents: list[IncidentRow]
    runs: list[RunRow]
    live: dict[str, dict[str, str | None]]  # node -> its pool and role in the fleet table
    on_call: list[OnCall]
    members: list[cluster_service.MemberRead]  # live cluster members (PostgreSQL)


class StatusReader:
    """Reads the status, again and again under `--watch`: one database engine and one
    latency window for the whole watch. `window` None: p95 since the daemon started.

    The daemons read are every live cluster member (their `http` addresses, from the
    database), else the config's `http.listen`; `metrics_url` names one to read instead.
    In the daemon, `local` reads its own snapshot rather than its own `/metrics` (the
    daemon whose member id is `local_member`, or the config's address), and `database` is
    its engine."""

    def __init__(
        self,
        config: Config,
        *,
        database_url: str,
        metrics_url: str | None = None,
        window: LatencyWindow | None = None,
        timeout: float = SCRAPE_TIMEOUT_S,
        database: db.LazyEngine | None = None,
        local: Callable[[], Exposition] | None = None,
        local_member: str | None = None,
    ) -> None:
        self.config = config
        self._only_url = metrics_url
        self._database_url = database_url
        self._window = window
        self._timeout = timeout
        self._database = database
        self._own_database = database is None
        self._local = local
        self._local_member = local_member

    def read(self, now: datetime | None = None) -> FleetStatus:
        now = now or datetime.now(UTC)
        records, database_error = None, None
        try:
            records = self._read_database(now)
        except db.DatabaseError as exc:
            database_error = str(exc)
        except sa.exc.SQLAlchemyError as exc:
            database_error = f"database {db.mask_url(self._database_url)}: {db.error_line(exc)}"
        daemons, parts = self._scrape(records.members if records else [])
        exposition = Exposition.merged(parts)
        answered = len(parts) > 0
        histograms = exposition.histograms(catalog.API_PROBE_DURATION)
        covers = None
        if self._window is not None and answered:
            histograms, covers = self._window.observe(histograms)
        nodes = node_rows(self.config, exposition, now.timestamp())
        if records is not None:
            live = records.live
            nodes = [replace(n, **live[n.name]) if n.name in live else n for n in nodes]
        status = FleetStatus(
            at=now,
            daemons=daemons,
            database=db.mask_url(self._database_url),
            database_error=database_error,
            nodes=nodes,
            endpoints=endpoint_rows(self.config, exposition, histograms),
            incidents=records.incidents if records else [],
            runs=records.runs if records else [],
            latency_covers=covers,
            attention=[],
            notifiers=notifier_rows(exposition),
            on_call=records.on_call if records else [],
            members=_int(exposition.value(catalog.CLUSTER_MEMBERS)),
        )
        status.attention.extend(needs_attention(status))
        return status

    def close(self) -> None:
        if self._own_database and self._database is not None:
            self._database.dispose()
            self._database = None

    def _sources(self, members: list[cluster_service.MemberRead]) -> list[DaemonRow]:
        if self._only_url is not None:
            return [DaemonRow(None, self._only_url)]
        if members:
            return [DaemonRow(m.member_id, metrics_url(m.http, host=m.host)) for m in members]
        return [DaemonRow(None, metrics_url(self.config.http.listen))]

    def _scrape(
        self, members: list[cluster_service.MemberRead]
    ) -> tuple[list[DaemonRow], list[Exposition]]:
        """Each daemon's scrape, at the same time and under one deadline; the rows say
        which did not answer."""
        sources = self._sources(members)

        def one(source: DaemonRow) -> Exposition:
            local = self._local is not None and (
                source.member is None or source.member == self._local_member
            )
            if local and self._only_url is None:
                assert self._local is not None
                return self._local()
            return fetch(source.url, timeout=self._timeout)

        if len(sources) == 1:
            futures = None
        else:
            pool = ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="status")
            futures = [pool.submit(one, s) for s in sources]
            pool.shutdown(wait=False)
        rows, parts = [], []
        for i, source in enumerate(sources):
            try:
                parts.append(one(source) if futures is None else futures[i].result())
                rows.append(source)
            except DaemonUnreachable as exc:
                rows.append(replace(source, error=str(exc)))
        return rows, parts

    def _read_database(self, now: datetime) -> _Records:
        if self._database is None:
            missing = _missing_sqlite_file(self._database_url)
            if missing is not None:
                # Connecting would create an empty file: status must leave no trace.
                raise db.DatabaseError(
                    f"no database at {missing}: run `reliability db upgrade` (or start the daemon)"
                )
            self._database = db.LazyEngine(self._database_url, self.config.database.limits())
        engine = self._database.get()
        db.check_schema(engine)
        with self._database.session() as session, session.begin():
            unresolved = [
                i
                for s in (IncidentStatus.open, IncidentStatus.acknowledged)
                for i in incident_service.list_incidents(session, status=s, limit=INCIDENT_LIMIT)
            ]
            picked = {r.id: r for r in run_service.history(session, limit=RECENT_RUNS)}
            picked.update((r.id, r) for r in run_service.unended(session))
            incidents = sorted(
                (_incident_row(i) for i in unresolved),
                key=lambda i: (SEVERITY_ORDER[i.severity], i.started_at, i.id),
            )
            runs = [_run_row(picked[k], now) for k in sorted(picked, reverse=True)]
            # Read only: nodes the fleet table does not know yet keep the config's picture.
            live = {
                r.node: {"pool": r.pool, "role": r.state.value}
                for r in fleet_service.nodes(session, config=self.config)
            }
            rotations = self.config.oncall.rotations if self.config.oncall else []
            on_call = [oncall_service.on_call(session, rotation=r, at=now) for r in rotations]
            members = (
                cluster_service.live_members(session, lease=self.config.cluster.lease)
                if engine.dialect.name == "postgresql"
                else []
            )
        return _Records(incidents, runs, live, on_call, members)


def document(status: FleetStatus) -> dict[str, Any]:
    """The whole status as the JSON document `status --json` prints and the daemon's
    `GET /api/v1/status` answers (times in ISO 8601, UTC); the screen is drawn from it."""
    at = status.at
    down = [d for d in status.daemons if d.error is not None]
    errors = "; ".join(f"{d.member}: {d.error}" for d in down) or None
    return _plain(
        {
            "at": at,
            "ok": status.ok,
            "attention": status.attention,
            # All of them together: up when every one answered.
            "daemon": {
                "url": (down or status.daemons)[0].url,
                "up": not down,
                "error": status.daemons[0].error if len(status.daemons) == 1 else errors,
            },
            "daemons": [
                {"member": d.member, "url": d.url, "up": d.error is None, "error": d.error}
                for d in status.daemons
            ],
            "cluster": {"members": status.members},
            "database": {
                "url": status.database,
                "up": status.database_error is None,
                "error": status.database_error,
            },
            "nodes": [asdict(n) | {"state": n.state} for n in status.nodes],
            "endpoints": [
                asdict(e) | {"p95_window_seconds": status.latency_covers} for e in status.endpoints
            ],
            "incidents": [
                asdict(i) | {"age_seconds": round((at - i.started_at).total_seconds())}
                for i in status.incidents
            ],
            "runs": [asdict(r) for r in status.runs],
            "notifiers": [asdict(n) for n in status.notifiers],
            "on_call": [asdict(p) for p in status.on_call],
        }
    )


def _plain(value: Any) -> Any:
    """`value` as JSON holds it: times in ISO 8601, enums as their values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def node_rows(config: Config, exposition: Exposition, now_unix: float) -> list[NodeRow]:
    """Each configured node, then any other the daemon reports (it may run another config)."""
    info = {
        labels["node"]: (labels.get("pool") or None, labels.get("role") or None)
        for labels, _ in exposition.values(catalog.NODE_INFO)
    }
    reported = {labels["node"] for labels, _ in exposition.values(catalog.NODE_UP)}
    configured = {n.name: n for n in config.nodes}
    names = [*configured, *sorted((reported | set(info)) - set(configured))]
    rows = []
    for name in names:
        node = configured.get(name)
        pool, role = (node.pool, node.role) if node else info.get(name, (None, None))
        up_value = exposition.value(catalog.NODE_UP, node=name)
        up = None if up_value is None else up_value >= 1
        expected = _int(exposition.value(catalog.NODE_GPUS_EXPECTED, node=name))
        if expected is None and node is not None and node.gpus:
            expected = node.gpus
        gpu_up = exposition.value(catalog.TARGET_UP, collector=collectors.GPU, target=name)
        down_for_seconds = None
        if up is False:
            last = exposition.value(
                catalog.TARGET_LAST_SUCCESS, collector=collectors.NODE, target=name
            )
            down_for_seconds = round(max(now_unix - last, 0.0), 1) if last is not None else None
        rows.append(
            NodeRow(
                name=name,
                pool=pool,
                role=role,
                up=up,
                gpus_visible=_int(exposition.value(catalog.NODE_GPUS_VISIBLE, node=name)),
                gpus_expected=expected,
                gpus_lost=_int(exposition.value(catalog.NODE_GPUS_LOST, node=name)),
                gpu_collect_failed=bool(up) and gpu_up == 0,
                down_for_seconds=down_for_seconds,
            )
        )
    return rows


def endpoint_rows(
    config: Config, exposition: Exposition, histograms: dict[tuple[str, ...], Histogram]
) -> list[EndpointRow]:
    """Each configured endpoint, then any other the daemon probes; ratios by window and
    p95 latency by probe (`histograms` keyed by (endpoint, probe))."""
    info = {
        labels["endpoint"]: (labels.get("role") or None, labels.get("service") or None)
        for labels, _ in exposition.values(catalog.ENDPOINT_INFO)
    }
    ratios: dict[str, dict[str, float]] = {}
    for labels, v in exposition.values(catalog.API_ERROR_RATIO):
        ratios.setdefault(labels["endpoint"], {})[labels["window"]] = v
    busy: dict[str, dict[str, float]] = {}
    for labels, v in exposition.values(catalog.API_OVERLOAD_RATIO):
        busy.setdefault(labels["endpoint"], {})[labels["window"]] = v
    p95: dict[str, dict[str, float | None]] = {}
    for (endpoint, probe), histogram in sorted(histograms.items()):
        q = histogram.quantile(QUANTILE)
        p95.setdefault(endpoint, {})[probe] = None if q is None else round(q, 4)
    configured = {e.name: e for e in config.endpoints}
    names = [*configured, *sorted((set(ratios) | set(info)) - set(configured))]
    rows = []
    for name in names:
        endpoint = configured.get(name)
        role, service = (
            (endpoint.role, endpoint.service) if endpoint else info.get(name, (None, None))
        )
        last = exposition.value(catalog.TARGET_UP, collector=collectors.API, target=name)
        rows.append(
            EndpointRow(
                name=name,
                role=role,
                service=service,
                last_probe_ok=None if last is None else last >= 1,
                error_ratio=dict(sorted(ratios.get(name, {}).items())),
                overload_ratio=dict(sorted(busy.get(name, {}).items())),
                p95_seconds=p95.get(name, {}),
            )
        )
    return rows


def notifier_rows(exposition: Exposition) -> list[NotifierRow]:
    """Each notifier the daemons send through, with what holds its pages back: healthy
    only where every daemon that reports it says so (each runs a dispatcher)."""
    healthy: dict[str, bool] = {}
    for labels, value in exposition.values(catalog.NOTIFIER_HEALTHY):
        name = labels["notifier"]
        healthy[name] = healthy.get(name, True) and value >= 1
    failures: dict[str, dict[tuple[str | None, str], NotifierFailure]] = {}
    for labels, since in exposition.values(catalog.NOTIFIER_PERMANENT_FAILURE):
        failure = NotifierFailure(
            destination=labels.get("destination") or None,
            reason=labels.get("reason", ""),
            since=datetime.fromtimestamp(since, UTC),
        )
        held = failures.setdefault(labels["notifier"], {})
        key = (failure.destination, failure.reason)
        if key not in held or failure.since < held[key].since:
            held[key] = failure
    return [
        NotifierRow(name, healthy[name], list(failures.get(name, {}).values()))
        for name in sorted(healthy)
    ]


def needs_attention(status: FleetStatus) -> list[str]:
    """One line per thing on-call should look at; empty when all is well.

    Counted, in this order: each daemon, then the database, not answering; a notifier whose
    pages are held back (a refused token or channel: nobody is paged); a node down, or
    up with GPUs lost or not readable; an unresolved critical incident; a run interrupted
    or whose undo failed (waiting for a human), a running run with no heartbeat, a run that
    failed or was aborted in the last hour. Endpoint error ratios count through the
    incidents their rules open, not by a threshold of this command's own.
    """
    out: list[str] = []
    for d in status.daemons:
        if d.error is not None:
            name = f"daemon {d.member}" if d.member else "daemon"
            out.append(f"{name} not answering at {d.url}: {d.error}")
    if status.database_error:
        out.append(status.database_error)
    for notifier in status.notifiers:
        if not notifier.healthy and not notifier.failures:
            out.append(f"{notifier.name} cannot deliver pages (the daemon's log says why)")
        for f in notifier.failures:
            where = f"to {f.destination}" if f.destination else "anywhere"
            out.append(
                f"{notifier.name} cannot deliver pages {where}: {f.reason} since "
                f"{f.since:%Y-%m-%d %H:%M}Z; they wait in the outbox "
                f"(`reliability notify test` checks each channel)"
            )
    for n in status.nodes:
        if n.up is False:
            out.append(f"node {n.name} is down")
        elif n.gpus_lost:
            out.append(f"node {n.name}: {n.gpus_lost} of {n.gpus_expected or '?'} GPUs lost")
        elif n.gpu_collect_failed:
            out.append(f"node {n.name}: its GPUs cannot be read")
    for i in status.incidents:
        if i.severity is Severity.critical:
            out.append(f"critical incident #{i.id} {i.status.value}: {i.title}")
    for r in status.runs:
        if r.status in WAITING:
            verb = "resume" if r.status is RunStatus.interrupted else "undo"
            out.append(
                f"run #{r.id} {r.runbook} {r.status.value}: "
                f"`reliability runbook {verb} {r.id}` ends it"
            )
        elif r.no_heartbeat_seconds is not None:
            out.append(f"run #{r.id} {r.runbook}: no heartbeat for {r.no_heartbeat_seconds:.0f}s")
        elif r.status in FAILED and r.ended_at and status.at - r.ended_at <= RECENT_FAILURE:
            out.append(f"run #{r.id} {r.runbook} {r.status.value}: {r.reason or ''}".rstrip(": "))
    return out


def _incident_row(i: Incident) -> IncidentRow:
    return IncidentRow(
        id=i.id,
        severity=Severity(i.severity),
        status=IncidentStatus(i.status),
        title=i.title,
        started_at=i.started_at,
        acknowledged_by=i.acknowledged_by,
        labels=dict(i.labels or {}),
    )


def _run_row(r: RunbookRun, now: datetime) -> RunRow:
    silent = (now - r.heartbeat_at).total_seconds()
    stale = r.status == RunStatus.running and silent > run_service.STALE_AFTER.total_seconds()
    return RunRow(
        id=r.id,
        runbook=r.runbook,
        status=RunStatus(r.status),
        step=r.step,
        started_by=r.started_by,
        started_at=r.started_at,
        ended_at=r.ended_at,
        reason=r.reason,
        services=list(r.services or []),
        no_heartbeat_seconds=round(silent, 1) if stale else None,
    )


def _int(value: float | None) -> int | None:
    return None if value is None else round(value)


def _missing_sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    if name.startswith("file:"):
        return None
    return None if Path(name).exists() else Path(name)
