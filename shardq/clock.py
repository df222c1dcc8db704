"""The wall clock, in the unit the protocol speaks (Unix epoch milliseconds).

The pure core never calls this: the engine is handed ``now`` by whoever drives it, so its
tests run on a fake clock. Everything that does read the clock reads it here.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Epoch milliseconds: the unit of every time field of the protocol and the records."""
    return int(time.time() * 1000)
