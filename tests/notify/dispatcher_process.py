"""A dispatcher in its own process, for the SIGKILL test: `dispatcher_process.py URL API_URL`.

Runs until killed; the token comes from $SLACK_BOT_TOKEN. Short lease so that the row a
killed predecessor held is retried within the test's patience.
"""

from __future__ import annotations

import os
import sys
import time

from reliability import db
from reliability.config import SlackConfig
from reliability.notify.dispatcher import Dispatcher, DispatchSettings
from reliability.notify.slack import SlackClient, SlackNotifier


def main(url: str, api_url: str) -> None:
    client = SlackClient(os.environ["SLACK_BOT_TOKEN"], base_url=api_url, timeout_s=2)
    config = SlackConfig(token_env="SLACK_BOT_TOKEN", channel="#alerts", max_per_second=100)
    dispatcher = Dispatcher(
        db.make_engine(url), SlackNotifier(client, config), settings=DispatchSettings(lease_s=3)
    )
    dispatcher.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
