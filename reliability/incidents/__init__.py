"""Incidents: deduplicated, acknowledgeable, resolvable records of what went wrong.

`models` holds the tables and read shapes, `service` and `silences` the database work
(explicit session, the caller owns the transaction), `flows` the work that also notifies
(the outbox rows of the events, in the same transaction), `render` how incidents look on a
terminal, `cli` the commands.
"""
