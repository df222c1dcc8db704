"""The protocol v1 extensions this server speaks, announced in HELLO's answer as ``features``.

A client checks for a name here before it uses the extension, so that it can say clearly what an
older server lacks instead of sending a request the server would NACK as unknown. Each name is
documented in docs/protocol.md ("Extensions"). Names are added, never renamed or removed.
"""

from __future__ import annotations

FEATURES: tuple[str, ...] = (
    "type-controls",  # PAUSE_TYPE, RESUME_TYPE, SET_LIMITS, GET_CONTROLS (pause, caps, rates)
)
