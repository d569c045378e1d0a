"""On call from Slack: what a click on an incident's message does (`flows.py`), and the
transports that bring the clicks (`route.py`: Slack's HTTP interactivity request URL)."""
