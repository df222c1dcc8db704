"""The protocol v1 extensions this server speaks, announced in HELLO's answer as ``features``.

A client checks for a name here before it uses the extension, so that it can say clearly what an
older server lacks instead of sending a request the server would NACK as unknown. Each name is
documented in docs/protocol.md ("Extensions"). Names are added, never renamed or removed.
"""

from __future__ import annotations

FEATURES: tuple[str, ...] = (
    "dlq_groups", "delete", "bulk", "search", "type_stats",  # insight: triage, delete, search, types
    "type-controls",  # PAUSE_TYPE, RESUME_TYPE, SET_LIMITS, GET_CONTROLS (pause, caps, rates)
    "query_payload",  # QUERY_STATUS with_payload (the dashboard's payload preview)
    "schedules",  # SCHEDULE_ADD / _LIST / _REMOVE / _PAUSE: periodic schedules in the broker
    "expiry",  # SUBMIT expires_at_ms / ttl_ms
    "unique",  # SUBMIT unique_key / unique_window_ms; the ACK's duplicates
    "dependency_results",  # CLAIM dependency_results
    "cancel_running",  # CANCEL of an in_progress task; HEARTBEAT answers `cancelled`
    "worker_control",  # WORKER_CONTROL quiet/stop; HEARTBEAT answers `command`
    "history",  # QUERY_STATUS with_history: each task's timeline
    "explain",  # EXPLAIN (0x20): why a task runs or not
)
