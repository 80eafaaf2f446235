"""``retention``: which tags the scheduled retention job deletes, checked key by key.

A stack sets it as an object, e.g.
``{"keepLast": 10, "keepDays": 30, "protect": ["latest", "v*"], "schedule": "0 3 * * *"}``.
"""

from __future__ import annotations

import re
from typing import Any

from ..settings import (
    DEFAULT_RETENTION_PROTECT,
    DEFAULT_RETENTION_SCHEDULE,
    DEFAULT_RETENTION_TIME_ZONE,
    RetentionSettings,
)
from .reader import fail
from .schedule import parse_schedule, parse_time_zone

RETENTION_KEYS = ("keepLast", "keepDays", "protect", "schedule", "timeZone", "dryRun")

# A tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127} (distribution/reference); a glob adds * ? [ ] ! to it.
_TAG_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


def parse_retention(_key: str, value: Any) -> RetentionSettings:
    if not isinstance(value, dict):
        fail('must be an object, e.g. {"keepLast": 10, "protect": ["latest"]}')
    unknown = sorted(set(value) - set(RETENTION_KEYS))
    if unknown:
        fail(f"{', '.join(unknown)}: not a retention setting; known: {', '.join(RETENTION_KEYS)}")
    keep_last = _count(value, "keepLast", "tags per repository")
    keep_days = _count(value, "keepDays", "days")
    if keep_last is None and keep_days is None:
        fail("sets neither keepLast nor keepDays, so it would keep only protected tags; "
             "set keepLast (the N most recent tags per repository) and/or keepDays (tags younger than D days)")
    dry_run = value.get("dryRun", False)
    if not isinstance(dry_run, bool):
        fail(f"dryRun: {dry_run!r} is not a boolean; use true (list what would go) or false")
    return RetentionSettings(
        keep_last=keep_last,
        keep_days=keep_days,
        protect=_protect(value.get("protect", list(DEFAULT_RETENTION_PROTECT))),
        schedule=parse_schedule(value.get("schedule", DEFAULT_RETENTION_SCHEDULE)),
        time_zone=parse_time_zone(value.get("timeZone", DEFAULT_RETENTION_TIME_ZONE)),
        dry_run=dry_run,
    )


def _count(value: dict[str, Any], key: str, what: str) -> int | None:
    count = value.get(key)
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100000:
        fail(f"{key}: {count!r} is not a whole number of {what} from 1 to 100000")
    return count


def _protect(patterns: Any) -> tuple[str, ...]:
    if not isinstance(patterns, list) or not all(isinstance(pattern, str) for pattern in patterns):
        fail('protect: must be a list of tag patterns, e.g. ["latest", "v*"]')
    for pattern in patterns:
        if not _TAG_GLOB.match(pattern) or not _brackets_balanced(pattern):
            fail(f"protect: {pattern!r} is not a tag pattern; use tag characters (letters, digits, _ . -) "
                 "with * (any run), ? (one character) and [...] (one of; [!...] none of)")
    return tuple(dict.fromkeys(patterns))


def _brackets_balanced(pattern: str) -> bool:
    inside = False
    for char in pattern:
        if char == "[":
            if inside:
                return False
            inside = True
        elif char == "]":
            if not inside:
                return False
            inside = False
    return not inside and "[]" not in pattern and "[!]" not in pattern
