"""Periodic schedules: stored on their owner shard, fired from its one timer, once per tick.

Rules:
1. A schedule lives on one shard, ``schedule_owner(name)`` (a hash of the name, like a task id's
   owner), in its ``metadata`` family under ``SCHEDULE_PREFIX + name``; memory holds every one of
   this shard's schedules and ONE heap of their next ticks (lazy entries, as ready.py's), which
   ``Engine.tick`` reads: 10,000 schedules cost one heap, not 10,000 timers.
2. Exactly one task per tick. The task's id is a pure function of the schedule's name and the
   tick's time (``tick_id``), in the owner's partition, and it is submitted as a client id: a
   tick fired twice finds the first task and makes none. The schedule's ``last_tick_ms`` is
   staged in the same write batch as the task, so a kill -9 keeps both or neither.
3. Ticks missed while the shard was down (or the disk refused writes, or the queue was full)
   follow the schedule's misfire policy when it runs again: the latest due tick is fired if it
   is at most ``misfire_grace_ms`` late; older than that, ``skip`` drops it and ``once`` fires it
   anyway. Earlier missed ticks are never fired (one catch-up at most), and are counted in
   ``misfires``. A paused schedule fires nothing; resuming it starts from the next tick.
4. A queue over its depth threshold refuses the tick's task (QueueFull): the tick is tried again
   every RETRY_FULL_MS while it is within its grace (``once``: until it is fired).
5. Pure, like the engine: ``now`` is passed in; errors are BadRequest / NotFound / InvalidState
   naming the field.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.engine.timing import Timing, local_iso, utc_iso
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.schedule_specs import ScheduleSpec
from shardq.specs import TaskSpec
from shardq.task import id_to_str, owner_of

SCHEDULE_PREFIX = b"schedule\x00"  # metadata key of a schedule: this, then its name (utf-8)
RECORD_VERSION = 1
# Due schedules fired in one tick; the rest go in the next loop turn (no stall behind 10,000).
FIRE_SLICE = 64
RETRY_FULL_MS = 1000  # a tick refused by QueueFull is tried again this much later
MAX_SCHEDULE_PAYLOAD = 64 * 1024  # kept in memory and in the record: 10,000 x 64 KiB at most
# The fields a schedule's record keeps from its SCHEDULE_ADD.
_SPEC_FIELDS = ("type", "cron", "every_ms", "timezone", "priority", "max_retries",
                "timeout_seconds", "misfire", "misfire_grace_ms")


def schedule_owner(name: str, shards: int) -> int:
    """The shard that stores and fires schedule ``name``: a pure function of the name."""
    digest = hashlib.sha256(b"shardq schedule\x00" + name.encode()).digest()
    return owner_of(digest, shards)


def tick_id(name: str, tick_ms: int, shards: int) -> bytes:
    """The id of the task that tick ``tick_ms`` of schedule ``name`` submits: a UUID (version 8,
    name-based) in the partition of the schedule's owner, so the submit never leaves it."""
    b = bytearray(hashlib.sha256(b"shardq tick\x00" + name.encode() + b"\x00"
                                 + str(tick_ms).encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    if shards > 1:
        owner = schedule_owner(name, shards)
        head = int.from_bytes(b[:4], "big")
        head = head - head % shards + owner
        if head >= 1 << 32:
            head -= shards
        b[:4] = head.to_bytes(4, "big")
    return bytes(b)


class Schedule:
    """One schedule: its spec, its timing and what it has done."""

    __slots__ = ("name", "spec", "timing", "created_ms", "updated_ms", "last_tick_ms",
                 "last_fired_ms", "last_task_id", "fired", "misfires", "due_ms", "ticks")

    def __init__(self, spec: ScheduleSpec, timing: Timing, created_ms: int) -> None:
        self.name = spec.name
        self.spec = spec
        self.timing = timing
        self.created_ms = created_ms
        self.updated_ms = created_ms
        self.last_tick_ms = created_ms  # ticks at or before this are done (fired or dropped)
        self.last_fired_ms: int | None = None
        self.last_task_id: bytes | None = None
        self.fired = 0
        self.misfires = 0
        self.due_ms: int | None = None  # the heap entry that counts; None while paused
        # Its ticks from due_ms on (None after a QueueFull: due_ms is then a retry, no tick).
        self.ticks: Iterator[int] | None = None

    def encode(self) -> bytes:
        s = self.spec
        rec: dict[str, Any] = {f: getattr(s, f) for f in _SPEC_FIELDS}
        rec.update(v=RECORD_VERSION, name=self.name, payload=base64.b64encode(s.payload).decode(),
                   paused=s.paused, created_ms=self.created_ms, updated_ms=self.updated_ms,
                   last_tick_ms=self.last_tick_ms, last_fired_ms=self.last_fired_ms,
                   last_task_id=None if self.last_task_id is None else self.last_task_id.hex(),
                   fired=self.fired, misfires=self.misfires)
        return orjson.dumps(rec)

    @classmethod
    def decode(cls, data: bytes) -> Schedule:
        rec = orjson.loads(data)
        spec = ScheduleSpec(name=rec["name"], payload=base64.b64decode(rec["payload"]),
                            paused=rec["paused"], **{f: rec[f] for f in _SPEC_FIELDS})
        s = cls(spec, Timing(spec.cron, spec.every_ms, spec.timezone, check=False), rec["created_ms"])
        s.updated_ms, s.last_tick_ms = rec["updated_ms"], rec["last_tick_ms"]
        s.last_fired_ms, s.fired, s.misfires = rec["last_fired_ms"], rec["fired"], rec["misfires"]
        s.last_task_id = None if rec["last_task_id"] is None else bytes.fromhex(rec["last_task_id"])
        return s

    def to_wire(self, shard: int) -> dict[str, Any]:
        """What SCHEDULE_LIST answers for it (docs/protocol.md, "Schedules")."""
        s = self.spec
        out: dict[str, Any] = {"name": self.name, "shard": shard}
        out.update({f: getattr(s, f) for f in _SPEC_FIELDS})
        out.update(payload_len=len(s.payload), paused=s.paused, created_ms=self.created_ms,
                   updated_ms=self.updated_ms, last_tick_ms=self.last_tick_ms,
                   last_fired_ms=self.last_fired_ms,
                   last_task_id=None if self.last_task_id is None else id_to_str(self.last_task_id),
                   fired=self.fired, misfires=self.misfires, next_ms=self.due_ms,
                   next_local=None if self.due_ms is None else local_iso(self.due_ms, s.timezone),
                   next_utc=None if self.due_ms is None else utc_iso(self.due_ms))
        return out


class EngineSchedules:
    """The schedules of this shard (a mixin of Engine: engine.py)."""

    store: Store
    s: EngineSettings
    _schedules: dict[str, Schedule]
    _schedule_heap: list[tuple[int, str]]

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def submit(self, specs: list[TaskSpec], now: int, home: int | None = None,
                   remote_status: dict[bytes, int | None] | None = None,
                   check_depth: bool = True) -> list[bytes]: ...

    # -- requests -------------------------------------------------------------------

    def schedule_add(self, spec: ScheduleSpec, now: int) -> Schedule:
        """Store a new schedule (or replace one, with ``spec.replace``); its first tick is the
        first after ``now``. A replaced schedule keeps its history and never re-fires a tick."""
        max_payload = min(self.s.max_payload, MAX_SCHEDULE_PAYLOAD)
        if len(spec.payload) > max_payload:
            raise BadRequest(f"payload: {len(spec.payload)} bytes; a schedule's payload is at most "
                             f"{min(max_payload, MAX_SCHEDULE_PAYLOAD)} bytes")
        if spec.misfire not in ("skip", "once"):
            raise BadRequest(f"misfire: must be 'skip' or 'once', got {spec.misfire!r}")
        if spec.every_ms is not None and spec.timezone != "UTC":
            # Refused rather than ignored: an interval ticks at multiples of it since the Unix
            # epoch, whatever the zone ("every 1d" is 00:00 UTC, not local midnight: use cron).
            raise BadRequest(f"timezone: applies to cron only; an every_ms schedule ticks at multiples "
                             f"of its interval since the Unix epoch (UTC), so {spec.timezone!r} would "
                             "change nothing (for local times, use cron with a timezone)")
        timing = Timing(spec.cron, spec.every_ms, spec.timezone)
        old = self._schedules.get(spec.name)
        if old is not None and not spec.replace:
            raise InvalidState(f"schedule {spec.name!r} exists; remove it first, or add it with "
                               "replace (CLI: --replace)")
        s = Schedule(spec, timing, now)
        if old is not None:
            s.created_ms, s.last_fired_ms, s.last_task_id = old.created_ms, old.last_fired_ms, old.last_task_id
            s.fired, s.misfires = old.fired, old.misfires
            s.last_tick_ms = max(old.last_tick_ms, now)
        self._schedules[s.name] = s
        self._arm(s, now)
        self._put_schedule(s)
        self._count("schedules_added")
        return s

    def schedule_remove(self, name: str) -> None:
        s = self._schedules.pop(name, None)
        if s is None:
            raise NotFound(f"no schedule {name!r}")
        self.store.meta_delete(SCHEDULE_PREFIX + name.encode())
        self._count("schedules_removed")

    def schedule_pause(self, name: str, paused: bool, now: int) -> Schedule:
        """Pause (nothing fires) or resume (from the next tick after ``now``: the ticks that
        fell while it was paused are not misfires and never fire)."""
        s = self.schedule_get(name)
        if s.spec.paused == paused:
            return s
        s.spec.paused = paused
        s.updated_ms = now
        if not paused:
            s.last_tick_ms = max(s.last_tick_ms, now)
        self._arm(s, now)
        self._put_schedule(s)
        return s

    def schedule_get(self, name: str) -> Schedule:
        s = self._schedules.get(name)
        if s is None:
            raise NotFound(f"no schedule {name!r}")
        return s

    def schedule_find(self, name: str) -> Schedule | None:
        return self._schedules.get(name)

    def schedule_list(self) -> list[Schedule]:
        return [self._schedules[n] for n in sorted(self._schedules)]

    # -- memory from the store --------------------------------------------------------

    def load_schedules(self, now: int) -> int:
        """Rebuild the schedules and their heap from the store (start, reload after a failed
        write). Missed ticks are handled when each falls due, at once (rule 3)."""
        self._schedules = {}
        self._schedule_heap = []
        for _, data in self.store.meta_items(SCHEDULE_PREFIX):
            s = Schedule.decode(data)
            self._schedules[s.name] = s
            self._arm(s, now, catch_up=True)
        return len(self._schedules)

    # -- time -------------------------------------------------------------------------

    def _arm(self, s: Schedule, now: int, catch_up: bool = False) -> None:
        """Put ``s`` in the heap at its next tick: the first after its last tick (``catch_up``:
        missed ones fall due at once) or the first after ``now``."""
        if s.spec.paused:
            s.ticks, s.due_ms = None, None
            return
        s.ticks = s.timing.ticks_after(s.last_tick_ms if catch_up else max(s.last_tick_ms, now))
        s.due_ms = next(s.ticks)
        heapq.heappush(self._schedule_heap, (s.due_ms, s.name))

    def fire_schedules(self, now: int) -> int | None:
        """Fire what is due (at most FIRE_SLICE schedules, their tasks in one submit); the next
        time a schedule falls due."""
        heap = self._schedule_heap
        firing: list[tuple[Schedule, int, bool]] = []
        looked = 0
        while heap and heap[0][0] <= now and looked < FIRE_SLICE:
            due, name = heapq.heappop(heap)
            s = self._schedules.get(name)
            if s is None or s.due_ms != due:
                continue  # stale: removed, paused, replaced or re-armed
            looked += 1
            latest, skipped = self._plan(s, now)
            if latest is None:
                pass
            elif now - latest <= s.spec.misfire_grace_ms or s.spec.misfire == "once":
                firing.append((s, latest, skipped))
                continue
            else:  # rule 3: too late for ``skip``
                s.misfires += 1
                s.last_tick_ms = latest
                self._put_schedule(s)
                self._count("schedule_misfired")
            self._push(s)
        if firing:
            self._submit_ticks(firing, now)
        if heap and heap[0][0] <= now:
            return now  # the rest in the next loop turn
        return heap[0][0] if heap else None

    def _plan(self, s: Schedule, now: int) -> tuple[int | None, bool]:
        """The tick to fire now (None: none is due) and whether earlier ones were missed; moves
        ``s`` on to its first tick after that one (or after ``now``)."""
        ticks, due = s.ticks, s.due_ms
        assert due is not None
        if ticks is not None and due > s.last_tick_ms:
            nxt = next(ticks)
            if nxt > now:  # on time (the usual case): one step of the ticks, no search
                s.due_ms = nxt
                return due, False
        timing = s.timing  # missed ticks (a downtime, a stalled loop) or a retry after QueueFull
        latest: int | None = timing.latest_at_or_before(now)
        assert latest is not None
        skipped = False
        if latest <= s.last_tick_ms:
            latest = None
        else:
            skipped = timing.next_after(s.last_tick_ms) < latest
        s.ticks = timing.ticks_after(max(now, s.last_tick_ms))
        s.due_ms = next(s.ticks)
        return latest, skipped

    def _submit_ticks(self, firing: list[tuple[Schedule, int, bool]], now: int) -> None:
        """One submit for the turn's ticks; each schedule's record staged with it (rule 2)."""
        shards = self.s.shards
        specs = [TaskSpec(s.spec.type, s.spec.payload, s.spec.priority, None, None, s.spec.max_retries,
                          s.spec.timeout_seconds, (), tick_id(s.name, latest, shards))
                 for s, latest, _ in firing]
        heap = self._schedule_heap
        try:
            self.submit(specs, now)
        except QueueFull:  # rule 4: the same ticks again later, within their grace
            self._count("schedule_queue_full", len(firing))
            for s, _, _ in firing:
                s.ticks, s.due_ms = None, now + RETRY_FULL_MS
                heapq.heappush(heap, (s.due_ms, s.name))
            return
        for (s, latest, skipped), spec in zip(firing, specs):
            s.fired += 1
            s.misfires += skipped
            s.last_tick_ms, s.last_fired_ms, s.last_task_id = latest, now, spec.id
            self._put_schedule(s)
            self._push(s)
        self._count("schedule_fired", len(firing))
        self._count("schedule_misfired", sum(skipped for _, _, skipped in firing))

    def _push(self, s: Schedule) -> None:
        assert s.due_ms is not None
        heapq.heappush(self._schedule_heap, (s.due_ms, s.name))

    def _put_schedule(self, s: Schedule) -> None:
        self.store.meta_put(SCHEDULE_PREFIX + s.name.encode(), s.encode())
