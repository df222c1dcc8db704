"""The per-type control operations (feature ``type-controls``), for every transport.

Rules:
1. A change (pause, resume, limits) is made by the type's owner shard (server/controls.py):
   any other shard forwards the request there over the mesh. The owner checks it against the
   current record, commits the new record, sends it to every other shard and answers once each
   live shard applied it: after the ACK no live shard claims a paused type.
2. A mesh request with the ``_apply`` field carries a committed record from its owner; only a
   forwarded (mesh) Operations takes it.
3. GET_CONTROLS answers every shard's live numbers for each controlled type (running count,
   slots, rate share, tokens, why it is blocked), asked of every shard at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from shardq.clock import now_ms
from shardq.engine.controls import TypeControl, default_burst
from shardq.errors import BadRequest, Forbidden, InvalidState, NotFound
from shardq.protocol.controls import APPLY_FIELD, UNSET
from shardq.protocol.frames import MsgType

if TYPE_CHECKING:
    from shardq.patterns import TypePatterns
    from shardq.server.operations import Identity, Result
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.operations")


class ControlOperations:
    """Mixin of Operations (operations.py)."""

    if TYPE_CHECKING:  # defined by Operations
        shard: ShardServer
        forwarded: bool
        routed: bool

    # -- changes -------------------------------------------------------------------------

    def pause_type(self, who: Identity, task_type: str) -> Result[dict[str, Any]]:
        """Stop claims of ``task_type`` everywhere; its submits are still accepted."""
        who.require("pause")
        return self._change_control(MsgType.PAUSE_TYPE, {"type": task_type}, who,
                            lambda c: _with(c, paused=True))

    def resume_type(self, who: Identity, task_type: str) -> Result[dict[str, Any]]:
        who.require("resume")

        def resume(c: TypeControl) -> TypeControl:
            if not c.paused:
                raise InvalidState(f"type {task_type!r} is not paused")
            return _with(c, paused=False)
        return self._change_control(MsgType.RESUME_TYPE, {"type": task_type}, who, resume)

    def set_limits(self, who: Identity, task_type: str, cap: Any, rate: Any, burst: Any,
                   header: dict[str, Any] | None = None) -> Result[dict[str, Any]]:
        """Set (a value), clear (None) or keep (UNSET) each limit of ``task_type``."""
        who.require("limits")
        if header is not None and APPLY_FIELD in header:
            if not self.forwarded:
                raise BadRequest(f"{APPLY_FIELD}: not a client field")
            self.shard.apply_remote_control(header[APPLY_FIELD])
            return {}
        wire: dict[str, Any] = {"type": task_type}
        for key, value in (("max_concurrency", cap), ("rate", rate), ("burst", burst)):
            if value is not UNSET:
                wire[key] = value

        def limit(c: TypeControl) -> TypeControl:
            new = _with(c, max_concurrency=c.max_concurrency if cap is UNSET else cap,
                        rate=c.rate if rate is UNSET else rate,
                        burst=c.burst if burst is UNSET else burst)
            if rate is None:
                new.burst = None if burst is UNSET else burst
            if new.burst is not None and new.rate is None:
                raise BadRequest("burst: needs a rate (give rate too, or clear burst with null)")
            return new
        return self._change_control(MsgType.SET_LIMITS, wire, who, limit)

    def _change_control(self, msg_type: MsgType, header: dict[str, Any], who: Identity,
                mutate: Any) -> Result[dict[str, Any]]:
        shard = self.shard
        task_type = header["type"]
        _check_scope(who, "pause" if msg_type is not MsgType.SET_LIMITS else "limits", task_type)
        owner = shard.control_owner(task_type)
        if owner != shard.index:
            if self.forwarded:
                raise BadRequest(f"type {task_type!r} is owned by shard {owner}, not {shard.index}")
            assert shard.peers is not None
            return self._forward_control(owner, msg_type, header)
        shard.check_writable()
        current = shard.owned_controls.get(task_type) or TypeControl(
            task_type, version=shard.engine.control_version(task_type))
        new = mutate(current)
        new.version = current.version + 1
        new.updated_ms = now_ms()
        if not self.forwarded:
            log.info("%s %r by API key %r", msg_type.name, task_type, who.name)
        shard.commit_control(new)
        return self._spread_control(new)

    async def _forward_control(self, owner: int, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        assert self.shard.peers is not None
        answer, _ = await self.shard.peers.request(owner, msg_type, header)
        answer.pop("rid", None)
        return answer

    async def _spread_control(self, control: TypeControl) -> dict[str, Any]:
        missed = await self.shard.spread_control(control)
        out = control_answer(control)
        if missed:
            out["not_reached"] = missed  # they learn it before they claim again
        return out

    # -- reads -----------------------------------------------------------------------------

    def get_controls(self, who: Identity, task_type: str | None) -> Result[dict[str, Any]]:
        """Every controlled type (or one), with each shard's live numbers."""
        who.require("get_controls")
        scope = who.scope("get_controls")
        if task_type is not None:
            _check_scope(who, "get_controls", task_type)
        local = [v for v in self._local_controls(task_type) if scope is None or scope.matches(v["type"])]
        shard = self.shard
        if self.forwarded:
            return {"controls": local}  # the asking shard merges
        if not self.routed or shard.peers is None:
            return {"controls": _merge([(shard.index, local)], task_type)}
        return self._controls_everywhere(task_type, local, scope)

    def _local_controls(self, task_type: str | None) -> list[dict[str, Any]]:
        engine = self.shard.engine
        now = now_ms()
        types = [task_type] if task_type is not None else [c.type for c in engine.controls()]
        return [v for v in (engine.control_view(t, now) for t in types) if v is not None]

    async def _controls_everywhere(self, task_type: str | None, local: list[dict[str, Any]],
                                   scope: TypePatterns | None) -> dict[str, Any]:
        shard = self.shard
        assert shard.peers is not None
        peers = shard.peers
        others = peers.others()
        header = {} if task_type is None else {"type": task_type}
        answers = await asyncio.gather(*(peers.request(i, MsgType.GET_CONTROLS, header) for i in others),
                                       return_exceptions=True)
        views: list[tuple[int, list[dict[str, Any]]]] = [(shard.index, local)]
        for i, a in zip(others, answers):
            if not isinstance(a, BaseException):
                views.append((i, [v for v in a[0].get("controls") or ()
                                  if scope is None or scope.matches(v["type"])]))
        out = {"controls": _merge(views, task_type)}
        down = [i for i, a in zip(others, answers) if isinstance(a, BaseException)]
        if down:
            out["shards_down"] = down
        return out


def _check_scope(who: Identity, operation: str, task_type: str) -> None:
    """A key scoped to some task types (docs/security.md) controls only those."""
    scope = who.scope(operation)
    if scope is not None and not scope.matches(task_type):
        raise Forbidden(f"this API key may not {operation} task type {task_type!r}")


def _with(c: TypeControl, **changes: Any) -> TypeControl:
    fields = {"paused": c.paused, "max_concurrency": c.max_concurrency, "rate": c.rate, "burst": c.burst}
    fields.update(changes)
    return TypeControl(c.type, fields["paused"], fields["max_concurrency"], fields["rate"], fields["burst"],
                       c.version, c.updated_ms)


def control_answer(control: TypeControl) -> dict[str, Any]:
    """The ACK of a change: the record as it is now (``burst`` resolved to its default)."""
    wire = control.to_wire()
    if control.rate is not None and control.burst is None:
        wire["burst"] = default_burst(control.rate)
    return {"control": wire}


_SHARD_KEYS = ("running", "limit", "rate_share", "tokens", "ready", "blocked_by", "refused_cap",
               "refused_rate")


def _merge(views: list[tuple[int, list[dict[str, Any]]]], task_type: str | None) -> list[dict[str, Any]]:
    """One row per type: the newest record, the totals, and each shard's numbers."""
    rows: dict[str, dict[str, Any]] = {}
    for shard, items in views:
        for v in items:
            row = rows.get(v["type"])
            if row is None or v["version"] > row["version"]:
                keep = row["shards"] if row is not None else {}
                row = rows[v["type"]] = {k: v[k] for k in ("type", "paused", "max_concurrency", "rate",
                                                           "burst", "version", "updated_ms")}
                row["shards"] = keep
            row["shards"][str(shard)] = {"shard": shard, "type": v["type"], "version": v["version"],
                                         **{k: v.get(k) for k in _SHARD_KEYS}}
    out = []
    for t in sorted(rows):
        row = rows[t]
        if row["rate"] is not None and row["burst"] is None:
            row["burst"] = default_burst(row["rate"])
        row["running"] = sum(s["running"] or 0 for s in row["shards"].values())
        row["ready"] = sum(s["ready"] or 0 for s in row["shards"].values())
        out.append(row)
    if task_type is not None and not out:
        raise NotFound(f"type {task_type!r} has no pause or limit")
    return out
