"""``garbageCollection``: whether the registry collects its garbage when it starts, and when it is
restarted so that it does. ``true`` (the default), ``false``, or an object
``{"schedule": "30 3 * * 0", "timeZone": "Europe/Berlin"}`` (the restart's cron schedule).
"""

from __future__ import annotations

from typing import Any

from ..settings import (
    DEFAULT_GARBAGE_COLLECTION_SCHEDULE,
    DEFAULT_GARBAGE_COLLECTION_TIME_ZONE,
    GarbageCollectionSettings,
)
from .reader import fail
from .schedule import parse_schedule, parse_time_zone

GARBAGE_COLLECTION_KEYS = ("schedule", "timeZone")


def parse_garbage_collection(_key: str, value: Any) -> GarbageCollectionSettings:
    if isinstance(value, bool):
        return GarbageCollectionSettings(enabled=value)
    if not isinstance(value, dict):
        fail('must be true, false or an object, e.g. {"schedule": "30 3 * * 0", "timeZone": "Etc/UTC"}')
    unknown = sorted(set(value) - set(GARBAGE_COLLECTION_KEYS))
    if unknown:
        fail(f"{', '.join(unknown)}: not a garbageCollection setting; known: {', '.join(GARBAGE_COLLECTION_KEYS)}")
    return GarbageCollectionSettings(
        enabled=True,
        schedule=parse_schedule(value.get("schedule", DEFAULT_GARBAGE_COLLECTION_SCHEDULE)),
        time_zone=parse_time_zone(value.get("timeZone", DEFAULT_GARBAGE_COLLECTION_TIME_ZONE)),
    )
