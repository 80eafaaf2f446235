"""A CronJob's ``schedule`` and ``timeZone``, as the retention and garbageCollection objects take them."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from .reader import fail

# What the CronJob controller's parser (robfig/cron, standard: five fields) takes, roughly; the
# API server has the last word. A time zone goes in timeZone: the API refuses TZ= in a schedule.
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]+$")
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def parse_schedule(schedule: Any) -> str:
    if not isinstance(schedule, str):
        fail(f"schedule: {schedule!r} is not a cron schedule; use five fields, e.g. \"0 3 * * *\" (03:00 daily)")
    text = schedule.strip()
    if "TZ=" in text:
        fail("schedule: carries a time zone; Kubernetes refuses TZ= there; put it in timeZone instead")
    fields = text.split()
    if not (text in _CRON_DESCRIPTORS or (len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields))):
        fail(f"schedule: {schedule!r} is not a cron schedule; use five fields (minute hour day month weekday), "
             "e.g. \"0 3 * * *\" (03:00 daily), or @daily")
    return " ".join(fields) if len(fields) == 5 else text


def parse_time_zone(name: Any) -> str:
    if isinstance(name, str) and name and not name.startswith(("/", ".")):
        try:
            zoneinfo.ZoneInfo(name)
            return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    fail(f"timeZone: {name!r} is not a time zone name; use one of the tz database, e.g. Europe/Berlin or Etc/UTC")
