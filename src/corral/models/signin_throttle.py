from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model


class SignInThrottle(Model):
    """Failed sign-ins counted under one key (see ``auth_service._throttle_keys``): a known client of an
    account, or, for other clients, the account, the account and address, or the address. ``locked_until`` is
    when the next attempt under the key is admitted (a delay that grows with ``failures``); the row counts for
    nothing once the window has passed since ``window_started_at`` (no delay yet) or since the delay ended."""

    __tablename__ = "signin_throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[datetime]
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
