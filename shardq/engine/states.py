"""The task state machine as data.

Rule: every status change a task can make is a row of TRANSITIONS. The engine
calls ``check(event, status)`` before it changes anything; the tests walk the
table; ``docs/lifecycle`` is drawn from it (``python -m shardq.engine.states``).
A change that is not in the table is a bug or an InvalidState for the client.
"""

from __future__ import annotations

from typing import NamedTuple

from shardq.errors import InvalidState
from shardq.task import CANCELLED, COMPLETED, DEAD_LETTER, FAILED, IN_PROGRESS, PENDING, STATUS_NAMES

NEW = -1  # the task does not exist yet


class Transition(NamedTuple):
    event: str
    sources: frozenset[int]
    target: int
    why: str


def _t(event: str, sources: tuple[int, ...], target: int, why: str) -> Transition:
    return Transition(event, frozenset(sources), target, why)


TRANSITIONS: tuple[Transition, ...] = (
    _t("submit", (NEW,), PENDING, "SUBMIT; ready when due and its dependencies are completed"),
    _t("submit_dependency_failed", (NEW,), DEAD_LETTER, "SUBMIT naming a dependency already dead_letter or cancelled"),
    _t("claim", (PENDING,), IN_PROGRESS, "CLAIM leases it to a worker; attempt + 1"),
    _t("complete", (IN_PROGRESS,), COMPLETED, "RESULT completed from the lease holder"),
    _t("fail_retry", (IN_PROGRESS,), FAILED, "RESULT failed or timeout, retries left: due after backoff"),
    _t("fail_final", (IN_PROGRESS,), DEAD_LETTER, "RESULT failed (retry false or none left) or timeout, none left"),
    _t("release", (IN_PROGRESS,), PENDING, "RESULT released or DEREGISTER_WORKER: back at once, not counted"),
    _t("reclaim_retry", (IN_PROGRESS,), PENDING, "lease expired or worker lost, retries left: back at once, counted"),
    _t("reclaim_final", (IN_PROGRESS,), DEAD_LETTER, "lease expired or worker lost, no retries left"),
    _t("retry_due", (FAILED,), PENDING, "its backoff has passed"),
    _t("cancel", (PENDING, FAILED), CANCELLED, "CANCEL before it starts"),
    _t("cancel_running", (IN_PROGRESS,), CANCELLED, "CANCEL while it runs: the lease is revoked, its worker told at its next HEARTBEAT"),
    _t("dependency_failed", (PENDING,), DEAD_LETTER, "a task it depends on ended dead_letter or cancelled"),
    _t("requeue", (DEAD_LETTER, FAILED), PENDING, "REQUEUE: due now, retry_count 0"),
    _t("expire", (PENDING, FAILED), DEAD_LETTER, "not started by its expires_at_ms: error expired (taskopts.py)"),
    _t("recover", (IN_PROGRESS,), IN_PROGRESS, "shard restart: the lease is restored (same worker and attempt), expiring a lease time after the start"),
)

_BY_EVENT = {t.event: t for t in TRANSITIONS}


def check(event: str, status: int) -> int:
    """The target status of ``event`` from ``status``, or InvalidState."""
    t = _BY_EVENT[event]
    if status not in t.sources:
        raise InvalidState(f"cannot {event.split('_')[0]} a task that is {STATUS_NAMES[status]}")
    return t.target


def diagram() -> str:
    """The table as text, for docs."""
    lines = ["| event | from | to | when |", "|---|---|---|---|"]
    for t in TRANSITIONS:
        src = ", ".join("(new)" if s == NEW else STATUS_NAMES[s] for s in sorted(t.sources))
        lines.append(f"| {t.event} | {src} | {STATUS_NAMES[t.target]} | {t.why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(diagram())

__all__ = ["TRANSITIONS", "Transition", "check", "diagram", "NEW", "PENDING", "IN_PROGRESS",
           "COMPLETED", "FAILED", "DEAD_LETTER", "CANCELLED"]
