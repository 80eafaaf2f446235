"""When the serving certificate is renewed: a pure function of the date and two settings.

Time is cut into periods of ``validity - renewal window`` days counted from a fixed epoch.
The certificate is re-issued by the first `pulumi up` of each period, so it is always renewed
at least ``renewal window`` days before it expires (provided `up` runs at least once a
period), and between renewals every evaluation declares exactly the same inputs.
"""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SECONDS_PER_DAY = 86400


def utcnow() -> dt.datetime:
    """The program's clock; tests replace it to move through rotation periods."""
    return dt.datetime.now(dt.UTC)


def rotation_period_days(validity_days: int, renewal_days: int) -> int:
    return validity_days - renewal_days


def rotation_number(now: dt.datetime, validity_days: int, renewal_days: int) -> int:
    """Which rotation period ``now`` falls in."""
    period_seconds = rotation_period_days(validity_days, renewal_days) * SECONDS_PER_DAY
    return int((now - EPOCH).total_seconds() // period_seconds)


def next_renewal(now: dt.datetime, validity_days: int, renewal_days: int) -> dt.datetime:
    """The first moment at which `pulumi up` issues the next certificate."""
    number = rotation_number(now, validity_days, renewal_days) + 1
    return EPOCH + dt.timedelta(days=number * rotation_period_days(validity_days, renewal_days))
