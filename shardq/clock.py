"""The wall clock, read in one place.

Rule: only the I/O side reads the clock (the shard, the coordinator, the clients); it passes
``now`` into the pure core, which never calls this (engine/ takes ``now`` as an argument).
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Epoch milliseconds: the unit of every time field of the protocol and the records."""
    return int(time.time() * 1000)
