"""Incidents: deduplicated, acknowledgeable, resolvable records of what went wrong.

`models` holds the tables and read shapes, `service` the database work (explicit session,
the caller owns the transaction).
"""
