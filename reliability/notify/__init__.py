"""Notifications: the Notifier seam (base.py) and its registry (registry.py), Slack the first
notifier (slack.py, rendered by blocks.py); the outbox (models.py, outbox.py, service.py)
and the dispatcher that sends it (dispatcher.py)."""
