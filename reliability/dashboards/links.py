"""The dashboards' uids, and the link to the dashboard that shows an incident.

The uids live here, not in the dashboard sources, so a Slack message can link to a dashboard
without importing grafanalib, and a renamed dashboard cannot leave a dead link behind
(tests/dashboards/test_build.py checks every uid here is built).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from urllib.parse import urlencode

GPU_FLEET = "reliability-gpu-fleet"
API_HEALTH = "reliability-api-health"
INCIDENTS_RUNBOOKS = "reliability-incidents-runbooks"
SERVING_ENGINES = "reliability-serving-engines"
CAPACITY_COST = "reliability-capacity-cost"
ALL = (GPU_FLEET, API_HEALTH, INCIDENTS_RUNBOOKS, SERVING_ENGINES, CAPACITY_COST)

# Shown around the incident, so the minutes before it started are on screen too.
MARGIN = timedelta(minutes=30)


def dashboard_for(labels: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The uid of the dashboard that shows an incident with these labels, and the variables
    that narrow it to the incident: a node (or a GPU on it) opens the GPU fleet on that node,
    an endpoint the API health of that endpoint, anything else the incidents dashboard."""
    if labels.get("node"):
        return GPU_FLEET, {"node": labels["node"]}
    if labels.get("endpoint"):
        return API_HEALTH, {"endpoint": labels["endpoint"]}
    return INCIDENTS_RUNBOOKS, {}


def incident_url(
    grafana_url: str,
    *,
    labels: Mapping[str, str],
    started_at: datetime,
    resolved_at: datetime | None = None,
) -> str:
    """`{grafana_url}/d/{uid}?var-...&from=...&to=...`: the time range runs from half an hour
    before the incident started to now, or to half an hour after its resolve."""
    uid, variables = dashboard_for(labels)
    params = {f"var-{name}": value for name, value in variables.items()}
    params["from"] = str(_millis(started_at - MARGIN))
    params["to"] = "now" if resolved_at is None else str(_millis(resolved_at + MARGIN))
    return f"{grafana_url.rstrip('/')}/d/{uid}?{urlencode(params)}"


def _millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)
