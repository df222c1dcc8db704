"""Per-type controls across shards, the coordinator's side: spreading records, handing out
concurrency slots and rate shares.

Rules:
1. Records: each shard reports the records it owns (server/controls.py); the coordinator keeps
   them, also while that shard is down (they cannot change then: only their owner changes
   them), and pushes every shard's records to every shard in STATE. ``controls_complete`` in
   STATE says that every shard has reported its records to this coordinator: a restarted shard
   opens its claims only then.
2. Slots (``max_concurrency`` N of a type): the coordinator gives each shard a *limit*; a shard
   leases a task of the type only while its running count is below its limit. ``hold[i]`` is
   what shard i may have in progress at most: max(its limit, its running count). The
   coordinator keeps sum(hold) <= N:
   - a raise reserves first (hold grows to the new limit before the grant is sent);
   - a lowering frees nothing until the shard reports, under the grant's sequence number, that
     it applied it (hold becomes max(new limit, running) then, and falls as tasks finish);
   - a shard that goes away keeps its hold (its leases come back with it); a restarted shard
     has no limit and reports its restored leases on its new link, which sets its hold;
   - after a coordinator restart (a new epoch) nothing is granted for a type until every
     shard reported its usage of it: shards keep the limits they had meanwhile.
   Slots go where tasks are ready: the shards with ready tasks of the type split what the
   others do not run; a shard with none keeps only its running slots. The owner of a task
   grants its lease, so a cross-shard claim counts against the owner's limit.
3. Rate (R per second, burst B): the shards with ready tasks of the type share R and B equally
   (each its own token bucket, burst at least 1); with none ready anywhere, every live shard
   gets an equal share. No hard invariant here: a share moves in a few ms.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardq.server.mesh import Link

log = logging.getLogger("shardq.coordinator")


def split(total: int, shards: list[int]) -> dict[int, int]:
    """``total`` slots over ``shards`` as evenly as possible (the first get the remainder)."""
    base, extra = divmod(total, len(shards))
    return {i: base + (1 if n < extra else 0) for n, i in enumerate(shards)}


class CoordinatorControls:
    """Mixin of Coordinator (coordinator.py)."""

    if TYPE_CHECKING:  # defined by Coordinator
        shards: int
        links: dict[int, Link]

    def _init_controls(self) -> None:
        self.records: dict[int, dict[str, dict[str, Any]]] = {}  # owner shard -> type -> record
        self.epoch = random.getrandbits(52)  # tells this coordinator's grants from a predecessor's
        self.grant_seq: dict[int, int] = {}
        self.sent_on_link: dict[int, bool] = {}
        self.grants: dict[int, dict[str, list[Any]]] = {}  # shard -> type -> [limit, share]
        self.hold: dict[int, dict[str, int]] = {}  # shard -> type -> slots it may use (rule 2)
        self.usage: dict[int, dict[str, list[int]]] = {}  # shard -> type -> [limit, running, ready]

    # -- reports ----------------------------------------------------------------------

    def controls_link_new(self, shard: int) -> None:
        """A (re)connected shard has only what it will report: nothing we sent before."""
        self.sent_on_link[shard] = False
        self.grants[shard] = {}

    def on_controls_report(self, shard: int, report: dict[str, Any]) -> bool:
        """Take the controls part of a REPORT; True when STATE must be pushed."""
        changed = False
        if "controls" in report:
            records = {w["type"]: w for w in report["controls"] if isinstance(w, dict) and "type" in w}
            if self.records.get(shard) != records or shard not in self.records:
                changed = True
            self.records[shard] = records
        usage = report.get("usage")
        if isinstance(usage, dict):
            types = usage.get("types") or {}
            self.usage[shard] = types
            sent = self.sent_on_link.get(shard, False)
            if not sent or (usage.get("epoch") == self.epoch and usage.get("seq") == self.grant_seq.get(shard, 0)):
                hold = self.hold.setdefault(shard, {})
                have = self.grants.setdefault(shard, {})
                for t, (limit, running, _ready) in types.items():
                    hold[t] = max(limit, running)
                    if not sent:
                        have[t] = [limit, None]
        if "controls" in report or isinstance(usage, dict):
            changed = self._rebalance() or changed
        return changed

    def controls_shard_lost(self) -> bool:
        return self._rebalance()

    # -- the view every shard gets -------------------------------------------------------

    def merged_controls(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for records in self.records.values():
            for t, rec in records.items():
                if t not in out or rec.get("version", 0) > out[t].get("version", 0):
                    out[t] = rec
        return out

    def controls_state(self) -> dict[str, Any]:
        """What STATE carries for the controls (nothing while there are none)."""
        merged = self.merged_controls()
        complete = len(self.records) >= self.shards
        state: dict[str, Any] = {"controls_complete": complete}
        if merged:
            state["controls"] = list(merged.values())
        grants = {str(i): {"epoch": self.epoch, "seq": self.grant_seq.get(i, 0),
                           "types": {t: [g[0], g[1] or 0.0] for t, g in self.grants.get(i, {}).items()}}
                  for i in self.links if self.sent_on_link.get(i)}
        if grants:
            state["grants"] = grants
        return state

    # -- slots and shares -------------------------------------------------------------------

    def _send(self, shard: int, task_type: str, limit: int, share: float | None) -> None:
        self.grants.setdefault(shard, {})[task_type] = [limit, share]
        if not self.sent_on_link.get(shard):
            self.sent_on_link[shard] = True
        self.grant_seq[shard] = self.grant_seq.get(shard, 0) + 1

    def _rebalance(self) -> bool:
        if len(self.records) < self.shards:
            return False  # some shard's records are unknown yet (rule 1)
        changed = False
        alive = sorted(self.links)
        for t, rec in self.merged_controls().items():
            cap = rec.get("max_concurrency")
            rate = rec.get("rate")
            if cap is None and rate is None:
                continue
            metering = [i for i in alive if t in self.usage.get(i, {})]
            ready = [i for i in metering if self.usage[i][t][2] > 0]
            shares = self._shares(ready or metering) if rate is not None else {}
            limits = self._limits(t, cap, alive, ready) if cap is not None else {}
            for i in metering:
                have = self.grants.setdefault(i, {}).get(t, [0, None])
                limit = limits.get(i, have[0] if cap is not None else 0)
                share = shares.get(i, 0.0)
                if limit != have[0] or have[1] is None or abs(share - have[1]) > 1e-9:
                    self._send(i, t, limit, share)
                    changed = True
        return changed

    @staticmethod
    def _shares(shards: list[int]) -> dict[int, float]:
        return {i: 1.0 / len(shards) for i in shards} if shards else {}

    def _limits(self, t: str, cap: int, alive: list[int], ready: list[int]) -> dict[int, int]:
        """New limits for type ``t`` (only those that may change now; rule 2)."""
        if any(t not in self.hold.get(i, {}) for i in range(self.shards)):
            return {}  # someone's usage of t is unknown: grant nothing new
        hold = {i: self.hold[i][t] for i in range(self.shards)}
        if not ready:
            return {}
        running = {i: self.usage.get(i, {}).get(t, [0, hold[i], 0])[1] for i in alive}
        others = [i for i in alive if i not in ready]
        fixed = sum(hold[i] for i in range(self.shards) if i not in self.links) + \
            sum(running[i] for i in others)
        desired = split(max(0, cap - fixed), ready)
        desired.update({i: running[i] for i in others})
        out: dict[int, int] = {}
        for i in alive:  # lowerings first: they free nothing until confirmed
            cur = self.grants.get(i, {}).get(t, [0])[0]
            if desired[i] < cur:
                out[i] = desired[i]
        free = cap - sum(hold.values())
        for i in ready:
            cur = self.grants.get(i, {}).get(t, [0])[0]
            if desired[i] > cur and free > 0:
                new = min(desired[i], max(cur, hold[i]) + free)
                cost = max(0, new - hold[i])
                if new > cur:
                    out[i] = new
                    free -= cost
                    self.hold[i][t] = max(hold[i], new)
        return out
