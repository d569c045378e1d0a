"""Maintenance windows: planned work on a node, a pool, a service or the whole fleet, during
which incidents there are recorded but page nobody, do not escalate and start no automatic
runbook (`models.py`, `service.py`, `scope.py`, `flows.py`, `reliability maintenance`)."""
