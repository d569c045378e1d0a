"""Grafana dashboards as code: building blocks, the loader that renders dashboards/*.dashboard.py
to deterministic JSON, the push to Grafana's HTTP API, and the dashboards' uids with the link
from an incident to the dashboard that shows it."""
