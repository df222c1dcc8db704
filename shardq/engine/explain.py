"""Why a task is (not) running: an ordered list of checks over the facts of its shard.

Rules:
1. ``explain(facts)`` runs CHECKS in order; the first that recognises the task's situation
   answers, with one sentence a person reads (``message``), a stable ``reason`` code for scripts,
   and the numbers it used (``details``). Each check is one function: a feature that adds a reason
   a task waits (a paused type, a rate limit, expiry) adds one function at its place in CHECKS.
2. The facts are plain data (a dict that crosses the shard mesh): the owner shard gathers what
   its engine knows (``Engine.explain_facts``: the record, the lease, the dependency waits, the
   place in its ready heap, its recent claims), and the shard that was asked adds what only
   others know (the live workers, from the coordinator; the dependency's own explanation, from
   its owner). Nothing here reads a store or a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardq.engine.history import format_ms

Facts = dict[str, Any]
Explanation = dict[str, Any]
Check = Callable[[Facts], Explanation | None]


def _answer(facts: Facts, reason: str, message: str, **details: Any) -> Explanation:
    return {"id": facts["id"], "type": facts["type"], "status": facts["status"], "shard": facts["shard"],
            "reason": reason, "message": message,
            "details": {k: v for k, v in details.items() if v is not None}}


def _seconds(ms: int) -> str:
    s = ms / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def completed(f: Facts) -> Explanation | None:
    if f["status"] != "completed":
        return None
    return _answer(f, "completed", f"completed at {format_ms(f['updated_ms'])} on attempt {f['attempt']}",
                   completed_ms=f["updated_ms"], attempt=f["attempt"], result_len=f.get("result_len"))


def cancelled(f: Facts) -> Explanation | None:
    if f["status"] != "cancelled":
        return None
    return _answer(f, "cancelled", f"cancelled at {format_ms(f['updated_ms'])}",
                   cancelled_ms=f["updated_ms"])


def expired(f: Facts) -> Explanation | None:
    """Dead-lettered by its expiry (taskopts.py: error ``expired``) before it ever started."""
    if f["status"] != "dead_letter" or f.get("error") != "expired":
        return None
    at = f.get("expires_at_ms")
    when = f" (its expiry was {format_ms(at)})" if at is not None else ""
    return _answer(f, "expired", f"expired at {format_ms(f['updated_ms'])} without having started{when}; "
                   "requeue it to run it anyway", expired_ms=f["updated_ms"], expires_at_ms=at)


def dead_lettered(f: Facts) -> Explanation | None:
    if f["status"] != "dead_letter":
        return None
    error = f.get("error") or ""
    if error.startswith("dependency failed: "):
        return _answer(f, "dependency_failed", f"dead-lettered because a task it depends on failed "
                       f"({error[len('dependency failed: '):]}); requeue that task, then this one",
                       dead_lettered_ms=f["updated_ms"], error=error)
    return _answer(f, "dead_lettered", f"dead-lettered after {f['attempt']} attempt(s) "
                   f"({f['retry_count']} of {f['max_retries']} retries used); last error: {error}",
                   dead_lettered_ms=f["updated_ms"], attempts=f["attempt"],
                   retry_count=f["retry_count"], max_retries=f["max_retries"], error=error)


def running(f: Facts) -> Explanation | None:
    if f["status"] != "in_progress":
        return None
    beat = f.get("last_heartbeat_ms")
    beat_text = (f"last heartbeat {_seconds(f['now_ms'] - beat)} ago" if beat is not None
                 else "no heartbeat yet for this attempt")
    return _answer(f, "running", f"running on worker {f['worker_id']} since {format_ms(f['started_ms'])} "
                   f"(attempt {f['attempt']}); {beat_text}; its lease expires at "
                   f"{format_ms(f['lease_expires_ms'])}",
                   worker_id=f["worker_id"], started_ms=f["started_ms"], attempt=f["attempt"],
                   last_heartbeat_ms=beat, heartbeats=f.get("heartbeats"),
                   lease_expires_ms=f["lease_expires_ms"])


def retry_backoff(f: Facts) -> Explanation | None:
    if f["status"] != "failed":
        return None
    return _answer(f, "retry_backoff", f"failed on attempt {f['attempt']} ({f.get('error') or 'no error text'}); "
                   f"retry {f['retry_count']} of {f['max_retries']} is due at {format_ms(f['scheduled_ms'])}, "
                   f"in {_seconds(max(0, f['scheduled_ms'] - f['now_ms']))}",
                   due_ms=f["scheduled_ms"], retry_count=f["retry_count"], max_retries=f["max_retries"],
                   error=f.get("error"))


def waiting_for_dependency(f: Facts) -> Explanation | None:
    waiting = f.get("waiting_on")
    if f["status"] != "pending" or not waiting:
        return None
    dep = f.get("dependency")
    if dep is None:
        said = "its state is unknown (its shard did not answer)"
    else:
        said = f"it is {dep['status']}: {dep['message']}"
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    return _answer(f, "waiting_for_dependency", f"waiting for dependency {waiting[0]}{more}; {said}",
                   waiting_on=waiting, dependency=dep)


def delayed(f: Facts) -> Explanation | None:
    if f["status"] != "pending" or f["scheduled_ms"] <= f["now_ms"]:
        return None
    return _answer(f, "delayed", f"delayed until {format_ms(f['scheduled_ms'])}, in "
                   f"{_seconds(f['scheduled_ms'] - f['now_ms'])}", due_ms=f["scheduled_ms"])


def held_back(f: Facts) -> Explanation | None:
    """Ready, but its type is paused, at its concurrency cap or out of rate tokens on this shard
    (engine/controls.py ``control_view``)."""
    c = f.get("control")
    if f["status"] != "pending" or not c or not c.get("blocked_by"):
        return None
    t = f["type"]
    why = c["blocked_by"]
    ready = c.get("ready")
    if why == "paused":
        return _answer(f, "paused", f"type {t!r} is paused (since {format_ms(c['updated_ms'])}); "
                       f"`shardq resume {t}` lets its {ready} ready task(s) run", paused_ms=c["updated_ms"],
                       ready=ready)
    if why == "concurrency":
        return _answer(f, "concurrency_cap", f"type {t!r} is at its concurrency cap: {c['running']} running "
                       f"here of this shard's {c['limit']} slot(s), {c['max_concurrency']} broker-wide; "
                       f"it starts when one of them ends", running=c["running"], slots=c["limit"],
                       max_concurrency=c["max_concurrency"], ready=ready)
    if why == "rate":
        share = c.get("rate_share") or 0
        wait = f" (about {_seconds(int(1000 / share))} per task here)" if share > 0 else ""
        return _answer(f, "rate_limited", f"type {t!r} is rate-limited to {c['rate']}/s broker-wide "
                       f"(this shard's share {share:g}/s, burst {c['burst']}): waiting for a token{wait}",
                       rate=c["rate"], rate_share=share, burst=c["burst"], tokens=c.get("tokens"), ready=ready)
    return _answer(f, "controls_syncing", "this shard restarted and is still learning the per-type "
                   "pauses and limits from the others; it hands out no task until it has them")


def _capable(f: Facts) -> tuple[int, int]:
    """Live workers in all, and those that run this task's type (a worker that named no types
    runs every type)."""
    workers = f.get("live_workers") or []
    return len(workers), sum(1 for w in workers if not w.get("types") or f["type"] in w["types"])


def no_live_worker(f: Facts) -> Explanation | None:
    if f["status"] != "pending" or f.get("claims_last_minute") or f.get("live_workers") is None:
        return None
    live, capable = _capable(f)
    if capable:
        return None
    return _answer(f, "no_worker", f"no live worker has claimed type {f['type']!r} in the last minute: "
                   f"{live} live worker(s), none of them registered for {f['type']!r}; start a worker "
                   f"that runs it", live_workers=live, capable_workers=0, ahead=f.get("ahead"))


def behind_others(f: Facts) -> Explanation | None:
    ahead = f.get("ahead") or 0
    if f["status"] != "pending" or not ahead:
        return None
    rate = f.get("claims_last_minute") or 0
    if rate:
        eta_ms = int(ahead / (rate / 60) * 1000)
        pace = (f"{rate} claimed in the last minute, so about {_seconds(eta_ms)}")
    else:
        eta_ms = None
        _, capable = _capable(f)
        pace = (f"none of its type claimed in the last minute although {capable} live worker(s) "
                "run it (busy with longer tasks?)")
    return _answer(f, "queued", f"behind {ahead} ready task(s) of type {f['type']!r} with higher or "
                   f"equal priority on shard {f['shard']}; {pace}", ahead=ahead,
                   claims_last_minute=rate, eta_ms=eta_ms)


def next_in_line(f: Facts) -> Explanation | None:
    if f["status"] != "pending":
        return None
    rate = f.get("claims_last_minute") or 0
    if rate:
        pace = f"{rate} of its type claimed in the last minute"
    else:
        _, capable = _capable(f)
        pace = (f"none of its type claimed in the last minute; {capable} live worker(s) can run it "
                "(busy with longer tasks?)")
    return _answer(f, "next", f"ready and next in line for type {f['type']!r} on shard {f['shard']}: "
                   f"the next worker that claims this type gets it; {pace}", claims_last_minute=rate)


# In order; the first that answers wins: ``held_back`` (a paused type, a concurrency cap, a
# rate limit) comes before ``no_live_worker``; ``expired`` before ``dead_lettered``, whose case
# it narrows.
CHECKS: list[Check] = [completed, cancelled, expired, dead_lettered, running, retry_backoff,
                       waiting_for_dependency, delayed, held_back, no_live_worker, behind_others, next_in_line]


def explain(facts: Facts) -> Explanation:
    for check in CHECKS:
        found = check(facts)
        if found is not None:
            return found
    return _answer(facts, "unknown", f"status {facts['status']}: no check recognised its situation")
