"""Per-type controls on one shard: paused types, concurrency slots and rate tokens.

Rules:
1. A *control* (``TypeControl``) is the broker-wide record an operator sets for a task type:
   paused, ``max_concurrency``, ``rate`` (claims per second) and ``burst``. It is durable at its
   owner shard and spread to every shard (server/controls.py); this file only applies it.
2. What this shard may do with a controlled type is its *gate* (``Gate``): the slots the
   coordinator granted it (``limit``; the cap is global, so each shard gets a part of it), its
   part of the rate (``share``) and its token bucket. A type whose gate says no is *blocked*:
   ``ReadyQueue.block`` hides its ready heap from every claim, ready hint and waiting claim, and
   ``unblock`` brings it back (waiting claims are then served as for new work).
3. The claim path pays nothing for types without a cap or rate: ``Engine._take`` and
   ``Engine._set_status`` test one dict (``_metered``), empty unless some type is metered.
   ``running`` counts this shard's in_progress tasks of a metered type (the leases it granted:
   the owner of a task grants its lease, also for a cross-shard claim), kept exact in
   ``_set_status`` and recounted from the lease table after recover/reload.
4. ``claims_open`` is False while the shard does not know every type's control yet (a restarted
   shard, until the coordinator's complete view arrives): then no claim takes anything here.
5. No I/O and no wall clock: every call takes ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.engine.leases import LeaseTable
from shardq.engine.ready import ReadyQueue
from shardq.errors import BadRequest
from shardq.task import IN_PROGRESS


def default_burst(rate: float) -> int:
    """A tenth of a second's worth of claims, at least 1: a batched claim still takes several
    tasks at once, and the first 10 s of a fresh bucket overshoot by at most 1 %."""
    return max(1, math.ceil(rate / 10))


@dataclass(slots=True)
class TypeControl:
    """The broker-wide control record of one task type (durable at its owner shard)."""

    type: str
    paused: bool = False
    max_concurrency: int | None = None
    rate: float | None = None  # claims per second, broker-wide
    burst: int | None = None  # the bucket's size, broker-wide (None with a rate: default_burst)
    version: int = 0  # raised by the owner on every change; a copy with a lower one is stale
    updated_ms: int = 0

    @property
    def active(self) -> bool:
        return self.paused or self.max_concurrency is not None or self.rate is not None

    @property
    def metered(self) -> bool:
        return self.max_concurrency is not None or self.rate is not None

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "paused": self.paused, "max_concurrency": self.max_concurrency,
                "rate": self.rate, "burst": self.burst, "version": self.version,
                "updated_ms": self.updated_ms}

    @classmethod
    def from_wire(cls, d: Any) -> TypeControl:
        """A record as another shardq process sent it (or as it was stored)."""
        if not isinstance(d, dict) or type(d.get("type")) is not str:
            raise BadRequest("control: not a control record")
        return cls(d["type"], bool(d.get("paused")), d.get("max_concurrency"),
                   None if d.get("rate") is None else float(d["rate"]), d.get("burst"),
                   int(d.get("version") or 0), int(d.get("updated_ms") or 0))


@dataclass(slots=True)
class Gate:
    """This shard's live state for one controlled type (rule 2)."""

    control: TypeControl
    running: int = 0  # in_progress here
    limit: int = 0  # slots granted to this shard (with max_concurrency)
    share: float = 0.0  # this shard's part of the rate and burst (with rate)
    tokens: float = 0.0
    refilled_ms: int = 0
    refused_cap: int = 0  # claims that found the type at its slots here
    refused_rate: int = 0  # ... out of tokens here
    granted: bool = False  # the coordinator (or the single shard) set limit/share

    def rate_here(self) -> float:
        c = self.control
        return (c.rate or 0.0) * self.share

    def burst_here(self) -> float:
        c = self.control
        if c.rate is None or self.share <= 0:
            return 0.0
        burst = c.burst if c.burst is not None else default_burst(c.rate)
        return max(1.0, burst * self.share)

    def refill(self, now: int) -> None:
        if self.control.rate is None:
            return
        if now > self.refilled_ms:
            self.tokens = min(self.burst_here(), self.tokens + (now - self.refilled_ms) * self.rate_here() / 1000)
            self.refilled_ms = now

    def blocked_by(self) -> str | None:
        """Why no task of the type may be claimed here now (tokens as last refilled)."""
        c = self.control
        if c.paused:
            return "paused"
        if c.max_concurrency is not None and self.running >= self.limit:
            return "concurrency"
        if c.rate is not None and self.tokens < 1:
            return "rate"
        return None

    def next_token_ms(self) -> int | None:
        """When the bucket next holds a whole token (None: it never refills at this share)."""
        rate = self.rate_here()
        if rate <= 0:
            return None
        return self.refilled_ms + max(1, math.ceil((1 - self.tokens) * 1000 / rate))


class EngineControls:
    """Mixin of Engine: applies controls and grants, and answers what the claim path asks."""

    _ready: ReadyQueue
    _leases: LeaseTable

    def _init_controls(self, open_claims: bool) -> None:
        self._gates: dict[str, Gate] = {}  # every type with an active control
        self._metered: dict[str, Gate] = {}  # those with a cap or a rate (rule 3)
        self._control_versions: dict[str, int] = {}  # newest version seen, removed ones too
        self._rate_wake: int | None = None  # when a rate-blocked type next gets a token
        self.claims_open = open_claims

    # -- applying records and grants ---------------------------------------------------

    def controls(self) -> list[TypeControl]:
        return [g.control for g in self._gates.values()]

    def control_version(self, task_type: str) -> int:
        return self._control_versions.get(task_type, 0)

    def apply_control(self, control: TypeControl, now: int, *, full_budget: bool = False) -> bool:
        """Take ``control`` unless a newer version of it is known; True when it was taken.
        ``full_budget``: this shard is the whole broker (no coordinator): all slots and the
        whole rate are its own."""
        t = control.type
        if control.version < self._control_versions.get(t, 0):
            return False
        self._control_versions[t] = control.version
        gate = self._gates.get(t)
        if not control.active:
            if gate is not None:
                del self._gates[t]
                self._metered.pop(t, None)
                self._ready.unblock(t)
            return True
        if gate is None:
            gate = self._gates[t] = Gate(control, refilled_ms=now)
        gate.control = control
        if control.metered:
            if t not in self._metered:
                self._metered[t] = gate
                gate.running = sum(1 for lease in self._leases.by_id.values() if lease.task.type == t)
        else:
            self._metered.pop(t, None)
        if full_budget:
            gate.limit = control.max_concurrency or 0
            gate.share = 1.0
            gate.granted = True
        self._reblock(t, gate, now)
        return True

    def apply_grant(self, task_type: str, limit: int, share: float, now: int) -> None:
        """The coordinator's part of the cap (``limit`` slots) and of the rate for this shard."""
        gate = self._gates.get(task_type)
        if gate is None:
            return
        gate.refill(now)
        gate.limit = limit
        gate.share = share
        gate.granted = True
        gate.tokens = min(gate.tokens, gate.burst_here())
        self._reblock(task_type, gate, now)

    def open_claims(self) -> None:
        """Every type's control is known (rule 4): claims may take tasks again."""
        if not self.claims_open:
            self.claims_open = True
            self._ready.dirty = True

    def _controls_recount(self) -> None:
        """After recover/reload: ``running`` from the lease table (restored leases count)."""
        if not self._metered:
            return
        for gate in self._metered.values():
            gate.running = 0
        for lease in self._leases.by_id.values():
            counted = self._metered.get(lease.task.type)
            if counted is not None:
                counted.running += 1
        for t, gate in self._metered.items():
            self._reblock(t, gate, gate.refilled_ms)

    # -- the claim path ----------------------------------------------------------------

    def _admit(self, task_type: str, now: int) -> bool:
        """May one more task of this metered type be leased now? Takes its token when so;
        blocks the type when not (so the caller's push_back puts the entry in ``held``)."""
        gate = self._metered[task_type]
        c = gate.control
        if c.max_concurrency is not None and gate.running >= gate.limit:
            gate.refused_cap += 1
            self._ready.block(task_type)
            return False
        if c.rate is not None:
            gate.refill(now)
            if gate.tokens < 1:
                gate.refused_rate += 1
                self._block_for_rate(task_type, gate)
                return False
            gate.tokens -= 1
            if gate.tokens < 1:
                self._block_for_rate(task_type, gate)
        return True

    def _gate_moved(self, task_type: str, old: int, new: int) -> None:
        """A task of a metered type entered or left in_progress (from Engine._set_status)."""
        gate = self._metered[task_type]
        if new == IN_PROGRESS and old != IN_PROGRESS:
            gate.running += 1
            if gate.control.max_concurrency is not None and gate.running >= gate.limit:
                self._ready.block(task_type)
        elif old == IN_PROGRESS and new != IN_PROGRESS:
            gate.running -= 1
            if task_type in self._ready.blocked and gate.blocked_by() is None:
                self._ready.unblock(task_type)

    def _block_for_rate(self, task_type: str, gate: Gate) -> None:
        self._ready.block(task_type)
        wake = gate.next_token_ms()
        if wake is not None and (self._rate_wake is None or wake < self._rate_wake):
            self._rate_wake = wake

    def _reblock(self, task_type: str, gate: Gate, now: int) -> None:
        gate.refill(now)
        why = gate.blocked_by()
        if why is None:
            self._ready.unblock(task_type)
        elif why == "rate":
            self._block_for_rate(task_type, gate)
        else:
            self._ready.block(task_type)

    def _controls_tick(self, now: int) -> int | None:
        """Unblock the rate-blocked types whose next token came; returns the next such time."""
        wake = self._rate_wake
        if wake is None or wake > now:
            return wake
        self._rate_wake = None
        for t, gate in self._metered.items():
            if gate.control.rate is not None and t in self._ready.blocked:
                self._reblock(t, gate, now)
        return self._rate_wake

    # -- reads (stats, reports, the explain feature) ---------------------------------------

    def control_view(self, task_type: str, now: int | None = None) -> dict[str, Any] | None:
        """Whether ``task_type`` is paused, at its slots or out of tokens on this shard, with
        the numbers (None: no control on it). For GET_CONTROLS, stats and explaining why a
        task waits."""
        gate = self._gates.get(task_type)
        if gate is None:
            return None
        if now is not None:
            gate.refill(now)
        c = gate.control
        return {**c.to_wire(), "running": gate.running,
                "limit": gate.limit if c.max_concurrency is not None else None,
                "rate_share": round(gate.share, 6) if c.rate is not None else None,
                "tokens": round(gate.tokens, 3) if c.rate is not None else None,
                "ready": self._ready.ready_count(task_type),
                "blocked_by": gate.blocked_by() if self.claims_open else "syncing",
                "refused_cap": gate.refused_cap, "refused_rate": gate.refused_rate}

    def control_usage(self) -> dict[str, list[int]]:
        """For the coordinator: per metered type [limit, running, ready here]."""
        ready = self._ready.ready_count
        return {t: [g.limit, g.running, ready(t)] for t, g in self._metered.items()}


if TYPE_CHECKING:
    __all__ = ["TypeControl", "Gate", "EngineControls", "default_burst"]
