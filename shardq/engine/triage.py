"""Dead-letter triage: which dead letters fail the same way, kept up to date as they come and go.

Rules:
1. A dead letter's *group* is its task type and its normalised error (``normalise``): the first
   line of the error with what varies between occurrences of one failure (numbers, hex ids, UUIDs,
   IP addresses, quoted strings) replaced by placeholders, so that "timeout after 30.2 s on
   10.0.0.7" and "timeout after 29.8 s on 10.0.0.9" are one group. A group is named by
   ``group_id``: a hash of both, the same on every shard, so that groups merge across shards by id.
2. ``DeadGroups`` is one shard's groups in memory, changed by the engine at every move into or
   out of dead_letter (engine/insight.py) and rebuilt at recovery from the dead_letter records: a
   request reads it, never scans for it. Memory: one entry per group and per second in which its
   dead letters were dead-lettered (first/last seen stay exact when members leave), and up to
   SAMPLES ids each.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# The normalised error is cut to this many characters: a group's name, not the whole story.
MAX_NORMALISED = 200
# Ids kept per group as samples (the most recent dead letters still in it).
SAMPLES = 4

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{1,4}(?![\w:])")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`")
_HEX = re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


# Only this much of an error's first line is read: the memo below is keyed by it, so it stays small
# (an error may be 64 KiB), and what is past it would be cut from the group's name anyway.
MAX_HEAD = 1000


def head(error: str | None) -> str:
    """The first line of an error, at most MAX_HEAD characters: all that names its group."""
    if not error:
        return ""
    return error.strip().split("\n", 1)[0].strip()[:MAX_HEAD]


def normalise(error: str | None) -> str:
    """The part of an error that names the failure, not its occurrence (rule 1)."""
    first = head(error)
    if not first:
        return ""
    first = _UUID.sub("<uuid>", first)
    first = _IPV4.sub("<ip>", first)
    first = _IPV6.sub("<ip>", first)
    first = _QUOTED.sub("<str>", first)
    first = _HEX.sub("<hex>", first)
    first = _NUMBER.sub("<n>", first)
    first = _SPACE.sub(" ", first)
    return first[:MAX_NORMALISED]


def group_id(task_type: str, normalised: str) -> str:
    """A group's name: 16 hex digits, the same on every shard (rule 1)."""
    return hashlib.blake2b(f"{task_type}\x00{normalised}".encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class Group:
    type: str
    error: str  # normalised
    example: str  # one member's error as it was (first line, cut)
    count: int = 0
    seconds: dict[int, int] = field(default_factory=dict)  # dead-lettered second -> members
    samples: list[bytes] = field(default_factory=list)  # most recent last


def group_of(task_type: str, error: str | None) -> str:
    """The group id of a dead letter (memoised by its head: a burst of one failure is normalised
    once, and the memo holds at most 4096 heads of at most MAX_HEAD characters)."""
    return _group_of_head(task_type, head(error))


@functools.lru_cache(maxsize=4096)
def _group_of_head(task_type: str, first: str) -> str:
    return group_id(task_type, normalise(first))


class DeadGroups:
    """One shard's dead letters by group (rule 2); ``by_id``: group id -> Group."""

    def __init__(self) -> None:
        self.by_id: dict[str, Group] = {}

    def key_of(self, task_type: str, error: str | None) -> str:
        gid = group_of(task_type, error)
        if gid not in self.by_id:
            self.by_id[gid] = Group(task_type, normalise(error), head(error)[:MAX_NORMALISED])
        return gid

    def add(self, raw_id: bytes, task_type: str, error: str | None, when_ms: int) -> None:
        g = self.by_id[self.key_of(task_type, error)]
        g.count += 1
        sec = when_ms // 1000
        g.seconds[sec] = g.seconds.get(sec, 0) + 1
        g.samples.append(raw_id)
        if len(g.samples) > SAMPLES:
            del g.samples[0]

    def remove(self, raw_id: bytes, task_type: str, error: str | None, when_ms: int) -> None:
        gid = self.key_of(task_type, error)
        g = self.by_id[gid]
        g.count -= 1
        sec = when_ms // 1000
        n = g.seconds.get(sec, 0) - 1
        if n > 0:
            g.seconds[sec] = n
        else:
            g.seconds.pop(sec, None)
        if raw_id in g.samples:
            g.samples.remove(raw_id)
        if g.count <= 0:
            del self.by_id[gid]

    def rows(self, type_ok: Any = None) -> list[dict[str, Any]]:
        """Every group as the wire shows one shard's part (ids of samples as hex)."""
        out = []
        for gid, g in self.by_id.items():
            if type_ok is not None and not type_ok(g.type):
                continue
            out.append({"group": gid, "type": g.type, "error": g.error, "example": g.example,
                        "count": g.count, "first_ms": min(g.seconds) * 1000 if g.seconds else None,
                        "last_ms": (max(g.seconds) * 1000 + 999) if g.seconds else None,
                        "samples": [s.hex() for s in g.samples]})
        return out


def merge_rows(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The groups of every shard as one list, largest first: counts add up, first/last seen are
    the earliest and latest, samples are pooled (at most SAMPLES)."""
    merged: dict[str, dict[str, Any]] = {}
    for rows in parts:
        for r in rows:
            m = merged.get(r["group"])
            if m is None:
                merged[r["group"]] = {**r, "samples": list(r["samples"])}
                continue
            m["count"] += r["count"]
            for key, pick in (("first_ms", min), ("last_ms", max)):
                vals = [v for v in (m[key], r[key]) if v is not None]
                m[key] = pick(vals) if vals else None
            m["samples"] = (m["samples"] + r["samples"])[-SAMPLES:]
    return sorted(merged.values(), key=lambda r: (-r["count"], r["type"], r["error"]))
