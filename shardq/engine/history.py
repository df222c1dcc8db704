"""A task's history: the compact timeline kept in its record, and its wire and human forms.

Rules:
1. The history lives in the record: written with it at each transition (no RocksDB write of its
   own) and deleted with it (retention). Most of it is not stored at all but read off the record's
   fixed fields, which already say when it was submitted (``created_ms``) and when, by whom and
   for which attempt it was last claimed (``started_ms``, ``worker_id``, ``attempt``), and, once
   completed, when (``updated_ms``). So an ordinary task -- submitted, claimed, completed -- stores
   no history and pays nothing for it; see ``to_wire``.
2. What the fixed fields cannot say is stored as events in the record's ``extras`` under
   HISTORY_KEY: an attempt that ends other than completed (its claim, heartbeats and outcome),
   retries, dead-lettering, cancel, requeue, a dependency resolved, a submit with an API key.
   Stored form: ``[dropped, event, event, ...]``, each event a short list ``[code, t_ms, fields...]``
   (EVENTS below). Codes are never renamed or reused: records on disk keep them.
3. Bounded: the first FIRST_KEEP stored events and the last LAST_KEEP are kept, and the ones in
   between are counted (``dropped``), so a task retried hundreds of times keeps a few KiB at
   most. Error texts are cut to ERROR_MAX characters.
4. This module knows the format and nothing about when events happen (``timeline.py`` does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shardq.task import COMPLETED, IN_PROGRESS, Task, id_to_str

HISTORY_KEY = "h"
# Enough for the story of an ordinary task (submitted, a few attempts) whole; past that the
# beginning and the latest attempts are what people ask about.
FIRST_KEEP = 8
LAST_KEEP = 24
# An error text past this is cut (a traceback's first lines say what it was); the full last error
# stays in the record's ``error`` field.
ERROR_MAX = 160

# code -> (wire name, names of the fields after t_ms)
EVENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "s": ("submitted", ("key",)),
    "c": ("claimed", ("attempt", "worker_id", "hostname")),
    "hb": ("heartbeats", ("last_ms", "count")),
    "ok": ("completed", ("attempt", "run_ms")),
    "f": ("failed", ("attempt", "error")),
    "r": ("retry_scheduled", ("due_ms",)),
    "rl": ("released", ("attempt",)),
    "rc": ("reclaimed", ("attempt", "reason")),
    "dl": ("dead_lettered", ("reason",)),
    "dep": ("dependencies_resolved", ("last",)),
    "x": ("cancelled", ("key",)),
    "rq": ("requeued", ("key",)),
}


def clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX - 1] + "\u2026"


def append(task: Task, event: list[Any]) -> None:
    """Add ``event`` to the task's history, dropping the oldest of the middle past the bound."""
    extras = task.extras
    if extras is None:
        task.extras = {HISTORY_KEY: [0, event]}
        return
    h = extras.get(HISTORY_KEY)
    if h is None:
        extras[HISTORY_KEY] = [0, event]
        return
    h.append(event)
    if len(h) > 1 + FIRST_KEEP + LAST_KEEP:
        del h[1 + FIRST_KEEP]
        h[0] += 1


def stored(task: Task) -> list[Any]:
    """The stored form, ``[dropped, event, ...]`` (``[0]`` when the task has none)."""
    extras = task.extras
    h = extras.get(HISTORY_KEY) if extras else None
    return h if h else [0]


def event_to_wire(event: list[Any]) -> dict[str, Any]:
    code, t_ms, *fields = event
    name, names = EVENTS.get(code, (str(code), ()))
    out: dict[str, Any] = {"event": name, "t_ms": t_ms}
    for key, value in zip(names, fields):
        if value is not None:
            out[key] = value
    if name == "dependencies_resolved" and isinstance(out.get("last"), str) and len(out["last"]) == 32:
        out["last"] = id_to_str(bytes.fromhex(out["last"]))
    return out


def to_wire(task: Task, hostname: str | None = None, beats: list[int] | None = None) -> dict[str, Any]:
    """``{"events": [...], "dropped": n, "dropped_after": k | None}``: the stored events with the
    ones the fixed fields say (rule 1) around them. ``hostname``: of the worker of the last claim,
    when it is known; ``beats``: ``[first_ms, last_ms, count]`` of the attempt running now."""
    h = stored(task)
    kept = h[1:]
    events: list[list[Any]] = []
    if not kept or kept[0][0] != "s":
        events.append(["s", task.created_ms])
    events.extend(kept)
    claimed = task.status in (IN_PROGRESS, COMPLETED) and task.attempt > 0
    if claimed and not any(e[0] == "c" and e[2] == task.attempt for e in kept):
        events.append(["c", task.started_ms, task.attempt, task.worker_id, hostname])
    if task.status == IN_PROGRESS and beats is not None:
        events.append(["hb", beats[0], beats[1], beats[2]])
    if task.status == COMPLETED:
        events.append(["ok", task.updated_ms, task.attempt, task.updated_ms - task.started_ms])
    return {"events": [event_to_wire(e) for e in events], "dropped": h[0],
            "dropped_after": FIRST_KEEP + (1 if kept and kept[0][0] != "s" else 0) if h[0] else None}


def describe(event: dict[str, Any]) -> str:
    """One event (wire form) as a phrase a person reads."""
    name = str(event["event"])
    at = f" (attempt {event['attempt']})" if "attempt" in event else ""
    if name == "submitted":
        return "submitted" + (f" with API key {event['key']}" if event.get("key") else "")
    if name == "claimed":
        host = f" on {event['hostname']}" if event.get("hostname") else ""
        return f"claimed by {event.get('worker_id')}{host}{at}"
    if name == "heartbeats":
        return f"{event['count']} heartbeat(s), the last at {format_ms(event['last_ms'])}"
    if name == "completed":
        return f"completed{at} after {event['run_ms'] / 1000:.3f} s"
    if name == "failed":
        return f"failed{at}: {event.get('error', '')}"
    if name == "retry_scheduled":
        return f"retry scheduled for {format_ms(event['due_ms'])}"
    if name == "released":
        return f"released by its worker{at}"
    if name == "reclaimed":
        return f"reclaimed{at}: {event.get('reason')}"
    if name == "dead_lettered":
        return f"dead-lettered: {event.get('reason')}"
    if name == "dependencies_resolved":
        return f"dependencies resolved (the last: {event.get('last')})"
    if name in ("cancelled", "requeued"):
        return name + (f" with API key {event['key']}" if event.get("key") else "")
    return name


def timeline(history: dict[str, Any]) -> list[str]:
    """The wire form as lines: ``HH:MM:SS.mmm  phrase``, with the dropped ones said where they were."""
    lines = []
    for i, event in enumerate(history["events"]):
        if history.get("dropped") and i == history.get("dropped_after"):
            lines.append(f"{'':23}  ... {history['dropped']} event(s) dropped ...")
        lines.append(f"{format_ms(event['t_ms'])}  {describe(event)}")
    return lines


def format_ms(t_ms: int) -> str:
    """UTC, with milliseconds: what the timeline lines and explanations print."""
    return datetime.fromtimestamp(t_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
