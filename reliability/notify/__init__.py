"""Notifications: the Slack seam (slack.py); the outbox and the renderer live beside it."""
