"""What `reliability status` shows, gathered from the daemon's `/metrics` and the database,
and what of it needs attention (the command's exit status).

It only reads. A daemon or database that does not answer is part of the status (one line
saying which URL and why), never an exception: the other half is still shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reliability import catalog, db
from reliability.collect import base as collectors
from reliability.config import Config
from reliability.exposition import Exposition, Histogram
from reliability.fleet import service as fleet_service
from reliability.incidents import service as incident_service
from reliability.incidents.models import Incident, IncidentStatus, Severity
from reliability.oncall import service as oncall_service
from reliability.oncall.rotation import OnCall
from reliability.runbooks import service as run_service
from reliability.runbooks.models import RunbookRun, RunStatus
from reliability.status.scrape import SCRAPE_TIMEOUT_S, DaemonUnreachable, LatencyWindow, fetch

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
class FleetStatus:
    at: datetime
    metrics_url: str
    daemon_error: str | None
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
    # Live daemons on the database as the scraped one counts them (cluster/); None: unknown.
    members: int | None = None

    @property
    def ok(self) -> bool:
        return not self.attention


class StatusReader:
    """Reads the status, again and again under `--watch`: one database engine and one
    latency window for the whole watch. `window` None: p95 since the daemon started."""

    def __init__(
        self,
        config: Config,
        *,
        metrics_url: str,
        database_url: str,
        window: LatencyWindow | None = None,
        timeout: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.metrics_url = metrics_url
        self._database_url = database_url
        self._window = window
        self._timeout = timeout
        self._engine: sa.Engine | None = None

    def read(self, now: datetime | None = None) -> FleetStatus:
        now = now or datetime.now(UTC)
        daemon_error = None
        try:
            exposition = fetch(self.metrics_url, timeout=self._timeout)
        except DaemonUnreachable as exc:
            exposition, daemon_error = Exposition({}), str(exc)
        histograms = exposition.histograms(catalog.API_PROBE_DURATION)
        covers = None
        if self._window is not None and daemon_error is None:
            histograms, covers = self._window.observe(histograms)
        nodes = node_rows(self.config, exposition, now.timestamp())
        endpoints = endpoint_rows(self.config, exposition, histograms)
        incidents: list[IncidentRow] = []
        runs: list[RunRow] = []
        on_call: list[OnCall] = []
        database_error = None
        try:
            incidents, runs, live, on_call = self._read_database(now)
            nodes = [replace(n, **live[n.name]) if n.name in live else n for n in nodes]
        except db.DatabaseError as exc:
            database_error = str(exc)
        except sa.exc.SQLAlchemyError as exc:
            database_error = f"database {db.mask_url(self._database_url)}: {_first_line(exc)}"
        status = FleetStatus(
            at=now,
            metrics_url=self.metrics_url,
            daemon_error=daemon_error,
            database=db.mask_url(self._database_url),
            database_error=database_error,
            nodes=nodes,
            endpoints=endpoints,
            incidents=incidents,
            runs=runs,
            latency_covers=covers,
            attention=[],
            notifiers=notifier_rows(exposition),
            on_call=on_call,
            members=_int(exposition.value(catalog.CLUSTER_MEMBERS)),
        )
        status.attention.extend(needs_attention(status))
        return status

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _read_database(
        self, now: datetime
    ) -> tuple[list[IncidentRow], list[RunRow], dict[str, dict[str, str | None]], list[OnCall]]:
        if self._engine is None:
            missing = _missing_sqlite_file(self._database_url)
            if missing is not None:
                # Connecting would create an empty file: status must leave no trace.
                raise db.DatabaseError(
                    f"no database at {missing}: run `reliability db upgrade` (or start the daemon)"
                )
            self._engine = db.make_engine(self._database_url, self.config.database.limits())
        db.check_schema(self._engine)
        with db.session_factory(self._engine)() as session, session.begin():
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
        return incidents, runs, live, on_call


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
    """Each notifier the daemon sends through, with what holds its pages back."""
    failures: dict[str, list[NotifierFailure]] = {}
    for labels, since in exposition.values(catalog.NOTIFIER_PERMANENT_FAILURE):
        failures.setdefault(labels["notifier"], []).append(
            NotifierFailure(
                destination=labels.get("destination") or None,
                reason=labels.get("reason", ""),
                since=datetime.fromtimestamp(since, UTC),
            )
        )
    return [
        NotifierRow(labels["notifier"], healthy >= 1, failures.get(labels["notifier"], []))
        for labels, healthy in sorted(
            exposition.values(catalog.NOTIFIER_HEALTHY), key=lambda s: s[0]["notifier"]
        )
    ]


def needs_attention(status: FleetStatus) -> list[str]:
    """One line per thing on-call should look at; empty when all is well.

    Counted, in this order: the daemon, then the database, not answering; a notifier whose
    pages are held back (a refused token or channel: nobody is paged); a node down, or
    up with GPUs lost or not readable; an unresolved critical incident; a run interrupted
    or whose undo failed (waiting for a human), a running run with no heartbeat, a run that
    failed or was aborted in the last hour. Endpoint error ratios count through the
    incidents their rules open, not by a threshold of this command's own.
    """
    out: list[str] = []
    if status.daemon_error:
        out.append(f"daemon not answering at {status.metrics_url}: {status.daemon_error}")
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


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
