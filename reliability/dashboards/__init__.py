"""Grafana dashboards as code: building blocks, the loader that renders dashboards/*.dashboard.py
to deterministic JSON, and the push to Grafana's HTTP API."""
