"""`reliability status`: one screen for on-call, read from the daemon's `/metrics` (nodes,
endpoints) and the database (incidents, runbook runs). It only reads: nothing it shows is
written anywhere, so it is safe to leave running in a terminal next to the daemon.

`scrape.py` fetches and indexes the exposition (and computes latency quantiles from its
histograms), `gather.py` turns it and the database into one `FleetStatus` and decides
what needs attention, `render.py` draws it (rich) or writes it (JSON), `cli.py` is the
command.
"""
