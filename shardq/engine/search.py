"""SEARCH on one shard: tasks by id prefix, type, status, priority range, time range and error
text, one bounded page at a time.

Rules:
1. Bounded work per call, whatever the store holds: a page looks at most SEARCH_SLICE keys, then
   answers what it found with a cursor that resumes right after the last key it looked at. A page
   can be short (even empty) and still have a cursor; only a null cursor says the shard is done.
2. The narrowest source does the walking (``SearchQuery.source``): an id prefix walks that id range
   of the task families; a type walks idx_type; dead letters alone walk idx_dead and completed or
   cancelled alone idx_finished (both by time, so an updated-time range narrows the walk); else
   the families of the statuses asked for. Every other field is checked on the record.
3. The cursor names its source; a cursor used with another query's source is a BadRequest.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardq.engine.storage import Store
from shardq.errors import BadRequest
from shardq.task import CANCELLED, COMPLETED, DEAD_LETTER, Task

SEARCH_SLICE = 1000  # keys looked at per page and shard (rule 1): ~15 ms of decoding at most
_LIVE = frozenset((0, 1, 3, 4))  # pending, in_progress, failed, dead_letter: the live family
_DONE = frozenset((COMPLETED, CANCELLED))


@dataclass(frozen=True, slots=True)
class SearchQuery:
    id_prefix: str | None = None  # lower-case hex digits, dashes removed
    type: str | None = None
    statuses: frozenset[int] | None = None
    min_priority: int = 0
    max_priority: int = 255
    created_from: int | None = None
    created_to: int | None = None
    updated_from: int | None = None
    updated_to: int | None = None
    error: str | None = None  # lower-cased substring

    @property
    def source(self) -> str:
        """i (id range), t (idx_type), d (idx_dead), f (idx_finished), s (families) (rule 2)."""
        if self.id_prefix:
            return "i"
        if self.type is not None:
            return "t"
        if self.statuses == frozenset((DEAD_LETTER,)):
            return "d"
        if self.statuses is not None and self.statuses <= _DONE:
            return "f"
        return "s"

    def id_range(self) -> tuple[bytes, bytes]:
        p = self.id_prefix or ""
        return (int(p.ljust(32, "0"), 16).to_bytes(16, "big"), int(p.ljust(32, "f"), 16).to_bytes(16, "big"))

    def families(self) -> list[bool]:
        """Which families hold the statuses asked for: True live, False done, in walk order."""
        st = self.statuses
        out = []
        if st is None or st & _LIVE:
            out.append(True)
        if st is None or st & _DONE:
            out.append(False)
        return out

    def matches(self, t: Task) -> bool:
        if self.statuses is not None and t.status not in self.statuses:
            return False
        if self.type is not None and t.type != self.type:
            return False
        if not self.min_priority <= t.priority <= self.max_priority:
            return False
        if self.created_from is not None and t.created_ms < self.created_from:
            return False
        if self.created_to is not None and t.created_ms > self.created_to:
            return False
        if self.updated_from is not None and t.updated_ms < self.updated_from:
            return False
        if self.updated_to is not None and t.updated_ms > self.updated_to:
            return False
        if self.error is not None and self.error not in (t.error or "").lower():
            return False
        return not self.id_prefix or t.id.hex().startswith(self.id_prefix)


class EngineSearch:
    store: Store

    if TYPE_CHECKING:
        def query(self, ids: list[bytes]) -> list[Task | None]: ...

    def search(self, q: SearchQuery, cursor: str | None, limit: int,
               type_ok: Callable[[str], bool] | None = None,
               budget: int = SEARCH_SLICE) -> tuple[list[Task], str | None, int]:
        """One page (rule 1): (tasks, cursor or None when this shard is done, keys looked at)."""
        source = q.source
        phase, after = _parse_cursor(cursor, source)
        out: list[Task] = []
        scanned = 0
        pos: tuple[int, bytes] | None = None
        for ph, key, task in self._walk(q, source, phase, after, budget):
            scanned += 1
            pos = (ph, key)
            if task is not None and q.matches(task) and (type_ok is None or type_ok(task.type)):
                out.append(task)
                if len(out) >= limit:
                    break
        if pos is None or (len(out) < limit and scanned < budget):
            return out, None, scanned
        # A lease's expiry is live state: the same as QUERY_STATUS shows.
        fresh = self.query([t.id for t in out]) if out else []
        return [f or t for f, t in zip(fresh, out)], f"{source}{pos[0]}:{pos[1].hex()}", scanned

    def _walk(self, q: SearchQuery, source: str, phase: int, after: bytes | None,
              budget: int) -> Iterator[tuple[int, bytes, Task | None]]:
        store = self.store
        if source in ("i", "s"):
            lo, hi = q.id_range() if source == "i" else (None, None)
            families = q.families() if source == "s" else [True, False]
            left = budget
            for ph in range(phase, len(families)):
                n = 0
                for key, task in store.scan_family(families[ph], lo, after, left):
                    n += 1
                    if hi is not None and key > hi:
                        break
                    yield ph, key, task
                left -= n
                after = None
                if left <= 0:
                    return
            return
        if source == "t":
            prefix = q.type.encode() + b"\x00"  # type: ignore[union-attr]
            for key in store.scan_index("idx_type", prefix, None if after is None else prefix + after, budget):
                raw = key[len(prefix):]
                yield 0, raw, store.get(raw)
            return
        index = "idx_dead" if source == "d" else "idx_finished"
        if after is None and q.updated_from:
            after = (q.updated_from - 1).to_bytes(8, "big") + b"\xff" * 16
        upper = None if q.updated_to is None else (q.updated_to + 1).to_bytes(8, "big")
        for key in store.scan_index(index, b"", after, budget, upper=upper):
            yield 0, key, store.get(key[8:])


def _parse_cursor(cursor: str | None, source: str) -> tuple[int, bytes | None]:
    if cursor is None:
        return 0, None
    try:
        head, _, key = cursor.partition(":")
        if head[:1] != source:
            raise ValueError
        phase = int(head[1:])
        raw = bytes.fromhex(key) if key else None
        if phase not in (0, 1):
            raise ValueError
    except ValueError:
        raise BadRequest(f"cursor: {cursor!r} is not a cursor of this search (a cursor resumes the "
                         "search it came from, with the same filters)") from None
    return phase, raw
