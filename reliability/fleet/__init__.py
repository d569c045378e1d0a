"""The fleet as it is now: each node's state (serving a pool, standby, out, in repair), seeded
from the config and changed by runbooks and operators."""
