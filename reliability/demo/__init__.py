"""`reliability demo`: a demo fleet on loopback with the daemon watching it (run.py), its
config (config.py), the faults `reliability demo inject` causes (faults.py, control.py)
and the Slack stand-in's messages in the terminal and a file (slack_echo.py)."""
