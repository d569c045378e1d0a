"""`reliability status`: one screen for on-call, read from the daemons' `/metrics` (nodes,
endpoints: every live cluster member's share, merged) and the database (incidents,
runbook runs). It only reads: nothing it shows is written anywhere, so it is safe to leave
running in a terminal next to the daemon.

`scrape.py` fetches and indexes an exposition (and computes latency quantiles from its
histograms), `gather.py` turns the daemons' and the database's into one `FleetStatus`,
decides what needs attention and writes its JSON document, `render.py` draws that
document (rich), `cli.py` is the command: the running daemon gathers it (GET
/api/v1/status) when it answers, else this process does.
"""
