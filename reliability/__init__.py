"""reliability: keeps self-hosted LLM serving up. GPU, node and API health as
Prometheus metrics; incidents; Slack on-call; dashboards as code; scripted runbooks."""

__version__ = "0.1.0"
