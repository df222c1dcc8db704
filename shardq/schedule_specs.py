"""What a periodic schedule is asked to be, once validated: the typed arguments of SCHEDULE_ADD.

Rule: plain data, no checks, like specs.py: ``protocol/requests.py`` builds a ``ScheduleSpec``
from a header and a blob (every field's type and range checked there), the engine takes it and
checks what only it can (the cron expression, the time zone: engine/timing.py). It lives here so
that neither of the two imports the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MISFIRE_POLICIES = ("skip", "once")
# A schedule's name: what an operator types and reads in logs; it also seeds the ids of the
# tasks its ticks make, so it is kept to characters that need no quoting anywhere.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}\Z")
NAME_REGEX = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"  # the same, for JSON Schema (HTTP API)
NAME_RULE = ("1 to 200 characters: letters, digits and . _ : @ -, starting with a letter or digit")


@dataclass(slots=True)
class ScheduleSpec:
    """One SCHEDULE_ADD: when (``cron`` xor ``every_ms``), and the task each tick submits."""

    name: str
    type: str
    payload: bytes = b""
    cron: str | None = None
    every_ms: int | None = None
    timezone: str = "UTC"
    priority: int | None = None
    max_retries: int | None = None
    timeout_seconds: int | None = None
    misfire: str = "skip"
    misfire_grace_ms: int = 60_000
    paused: bool = False
    replace: bool = False
