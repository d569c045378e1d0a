"""`pending_alerts`: rule groups whose condition holds but whose `for` has not run out yet.

Written by the member that evaluates the group (the owner of its target, cluster/) when the
group starts pending, removed when it fires or clears; a member that takes the target over
(its owner died, or the shares moved) resumes the timer from `since` instead of starting it
from zero. `since` is on the database's clock: a member writes and reads ages measured by
the server, so no host clock is compared with another.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from reliability.db import JSON, Base, UTCDateTime


class PendingAlert(Base):
    __tablename__ = "pending_alerts"

    fingerprint: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    rule: Mapped[str] = mapped_column(sa.String(255))
    # The group's labels: the new owner keeps only the entries of targets it holds.
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    member_id: Mapped[str | None] = mapped_column(sa.String(64))
