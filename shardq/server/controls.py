"""Per-type controls across shards, the shard's side: durable records, spreading, grants.

Rules:
1. Each task type's control record has one *owner* shard, ``control_owner(type)`` (a stable
   hash of the name, like a task id's owner). The owner keeps it in its RocksDB ``metadata``
   (key ``CONTROLS_KEY``: every record it owns, with tombstones, as one JSON object), and
   every change is made there: committed before anything else sees it.
2. After the commit the owner sends the record to every other shard over the mesh (SET_LIMITS
   with the ``_apply`` field) and answers the client only when each live shard applied it; it
   also reports it to the coordinator, which pushes every shard's records to every shard in
   STATE. A record carries a version, raised by its owner on every change, so an older copy
   arriving late changes nothing.
3. A (re)started shard of a multi-shard server opens no claim (``Engine.claims_open``) until a
   STATE says the coordinator holds the records of *every* shard (``controls_complete``): so a
   pause or a cap set while it was down is known before it leases anything. Its own records
   it knows from disk.
4. Caps and rates are budgets the coordinator hands out (coordinator_controls.py): ``grants``
   in STATE give this shard its slots and its share of the rate per type, tagged with the
   coordinator's epoch and a sequence number. The shard reports back, in its REPORTs, which
   grant it applied and, per metered type, its limit, its running count and its ready count.
   A shard whose records say a type is capped but that has no grant for it takes no slot.
5. A shard without a coordinator (tests that run one in-process) is the whole broker: every
   slot and the whole rate are its own.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from shardq.clock import now_ms
from shardq.engine.controls import TypeControl
from shardq.protocol.controls import APPLY_FIELD
from shardq.protocol.frames import MsgType

if TYPE_CHECKING:
    from shardq.engine.engine import Engine
    from shardq.server.mesh import Link, Peers
    from shardq.store.partitioned import PartitionedStore

log = logging.getLogger("shardq.controls")

CONTROLS_KEY = b"type_controls"


def control_owner(task_type: str, shards: int) -> int:
    """The shard that keeps ``task_type``'s control record: crc32 of the name, mod shards
    (stable across processes and restarts, unlike ``hash``)."""
    return zlib.crc32(task_type.encode()) % shards if shards > 1 else 0


class ShardControls:
    """Mixin of ShardServer (shard.py)."""

    if TYPE_CHECKING:  # defined by ShardServer
        engine: Engine
        store: PartitionedStore
        shards: int
        index: int
        run_dir: str | None
        peers: Peers | None
        coordinator: Link | None
        def _flush(self) -> None: ...
        def _schedule_report(self) -> None: ...
        def mutated(self) -> None: ...
        def last_flush_failed(self) -> bool: ...
        def unavailable(self) -> Exception: ...

    def _init_shard_controls(self) -> None:
        self.owned_controls: dict[str, TypeControl] = {}
        self.controls_dirty = True  # the owned records must reach the coordinator
        self.grant_applied: tuple[int, int] | None = None  # (coordinator epoch, seq)
        self._usage_reported: dict[str, list[int]] = {}

    @property
    def alone(self) -> bool:
        """No coordinator hands out budgets: this shard has them all (rule 5)."""
        return self.run_dir is None

    def control_owner(self, task_type: str) -> int:
        return control_owner(task_type, self.shards) if self.peers is not None else self.index

    # -- durable records (rule 1) -------------------------------------------------------

    def load_controls(self) -> None:
        """After recovery: this shard's own records from disk; claims stay closed on a
        multi-shard server until the others' are known (rule 3)."""
        raw = self.store.parts[0].meta_get(CONTROLS_KEY)
        records = orjson.loads(raw) if raw else {}
        now = now_ms()
        for wire in records.values():
            control = TypeControl.from_wire(wire)
            self.owned_controls[control.type] = control
            self.engine.apply_control(control, now, full_budget=self.alone)
        if self.shards > 1 and not self.alone:
            self.engine.claims_open = False
        active = [c.type for c in self.owned_controls.values() if c.active]
        if active:
            log.info("controls on %d type(s) owned here: %s", len(active), ", ".join(sorted(active)))

    def commit_control(self, control: TypeControl) -> None:
        """Store ``control`` (owned here), apply it, and commit now: raises Unavailable when
        the write failed (memory is then as before)."""
        before = self.owned_controls.get(control.type)
        self.owned_controls[control.type] = control
        self.store.meta_put(CONTROLS_KEY, orjson.dumps(
            {t: c.to_wire() for t, c in sorted(self.owned_controls.items())}))
        self._flush()
        if self.last_flush_failed():
            if before is None:
                del self.owned_controls[control.type]
            else:
                self.owned_controls[control.type] = before
            raise self.unavailable()
        self.engine.apply_control(control, now_ms(), full_budget=self.alone)
        self.controls_dirty = True
        self._schedule_report()
        log.info("control of %r is now %s (version %d)", control.type, describe(control), control.version)

    async def spread_control(self, control: TypeControl) -> list[int]:
        """Send a committed record to every other shard (rule 2); the shards that did not take
        it (down, restarting) are returned: they learn it before they claim (rule 3)."""
        if self.peers is None:
            return []
        peers = self.peers
        others = peers.others()
        answers = await asyncio.gather(
            *(peers.request(i, MsgType.SET_LIMITS, {"type": control.type, APPLY_FIELD: control.to_wire()})
              for i in others), return_exceptions=True)
        return [i for i, a in zip(others, answers) if isinstance(a, BaseException)]

    def apply_remote_control(self, wire: Any) -> None:
        """A record another shard owns (over the mesh or in STATE): take it if it is newer."""
        control = TypeControl.from_wire(wire)
        if control.type in self.owned_controls and self.control_owner(control.type) == self.index:
            return  # our own record on disk is the truth
        self.engine.apply_control(control, now_ms(), full_budget=self.alone)

    def controls_summary(self) -> dict[str, Any]:
        """GET_STATS' ``controls``: each controlled type's record (omitted when none)."""
        controls = self.engine.controls()
        if not controls:
            return {}
        return {"controls": {c.type: {"paused": c.paused, "max_concurrency": c.max_concurrency,
                                      "rate": c.rate, "burst": c.burst} for c in controls}}

    # -- the coordinator (rules 3, 4) -------------------------------------------------------

    def on_state_controls(self, state: dict[str, Any]) -> None:
        if "controls" not in state and "grants" not in state and self.engine.claims_open:
            return
        self.mutated()  # an unblocked type serves the waiting claims at the next tick
        for wire in state.get("controls") or ():
            self.apply_remote_control(wire)
        grant = (state.get("grants") or {}).get(str(self.index))
        if grant is not None:
            tag = (grant.get("epoch"), grant.get("seq"))
            if tag != self.grant_applied:
                now = now_ms()
                for t, (limit, share) in (grant.get("types") or {}).items():
                    self.engine.apply_grant(t, limit, share, now)
                self.grant_applied = tag  # type: ignore[assignment]
                self._schedule_report()
        if state.get("controls_complete") and not self.engine.claims_open:
            self.engine.open_claims()
            log.info("every shard's controls are known: claims open")

    def controls_report(self, full: bool) -> dict[str, Any]:
        """The controls part of a REPORT: this shard's records (on connect and when they
        changed) and, while some type is metered, its usage."""
        out: dict[str, Any] = {}
        if full or self.controls_dirty:
            out["controls"] = [c.to_wire() for c in self.owned_controls.values()]
            self.controls_dirty = False
        usage = self.engine.control_usage()
        if usage or self._usage_reported:
            epoch, seq = self.grant_applied or (None, 0)
            out["usage"] = {"epoch": epoch, "seq": seq, "types": usage}
            self._usage_reported = usage
        return out

    def controls_changed(self) -> bool:
        """Whether the coordinator should hear soon: a record changed, a metered type's
        running count or readiness changed (slots to give back or to ask for)."""
        if self.controls_dirty:
            return True
        if not self.engine._metered:
            return bool(self._usage_reported)
        usage = self.engine.control_usage()
        old = self._usage_reported
        return any(t not in old or old[t][1] != u[1] or (old[t][2] > 0) != (u[2] > 0) or old[t][0] != u[0]
                   for t, u in usage.items()) or len(old) != len(usage)


def describe(control: TypeControl) -> str:
    parts = ["paused" if control.paused else "not paused"]
    if control.max_concurrency is not None:
        parts.append(f"max_concurrency={control.max_concurrency}")
    if control.rate is not None:
        parts.append(f"rate={control.rate:g}/s burst={control.burst or 'default'}")
    return " ".join(parts)
