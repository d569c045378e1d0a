"""Measured capacity of the serving pools, and the cost of serving (self-hosted against hosted).

`models.py` (`capacity_tests`), `service.py` (database only), `load.py` (the load generator:
Locust as a library, run only in a subprocess of its own, since importing Locust patches the
whole process with gevent), `measure.py` (runs it and reads its report), `cost.py` (the
arithmetic of the cost report), `chart.py` (its PNG), `cli.py` (`capacity`, `cost`).
"""
