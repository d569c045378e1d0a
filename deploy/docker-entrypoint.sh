#!/bin/sh
# The image's entrypoint. No arguments: migrate the database, then run the daemon as this
# process (exec), so `docker stop`'s SIGTERM reaches it and it stops cleanly.
# With arguments: run that reliability command, e.g. `docker compose run --rm daemon-1 incidents list`.
set -eu
if [ "$#" -gt 0 ]; then
  exec reliability "$@"
fi
reliability db upgrade
exec reliability daemon
