"""The schedule operations (add, list/show, remove, pause/resume), for every transport.

Rules:
1. A schedule lives on its owner shard (engine/schedules.py ``schedule_owner``: a hash of its
   name). A request about one schedule is done there: here when this shard owns it, else
   forwarded over the mesh (one hop, answered after the owner's group commit, as routing.py
   does for tasks). A list asks every shard and merges by name; a shard that is down is named
   in ``unavailable_shards`` rather than failing the whole list.
2. Changing a schedule needs ``admin`` (it submits tasks on its own, for ever); reading them
   needs ``read``. A key scoped to some task types sees and changes only the schedules whose
   task type it may touch (to the others it answers as if there were none).
3. ``ScheduleOperations`` is a mixin of ``Operations`` (operations.py): it uses its ``shard``,
   ``engine``, ``forwarded`` and ``routed``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from shardq.clock import now_ms
from shardq.engine.schedules import Schedule, schedule_owner
from shardq.errors import Forbidden, NotFound, WireError
from shardq.patterns import TypePatterns
from shardq.protocol.frames import MsgType
from shardq.protocol.schedules import schedule_add_header
from shardq.schedule_specs import ScheduleSpec

if TYPE_CHECKING:
    from shardq.engine.engine import Engine
    from shardq.server.operations import Identity, Result
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.schedules")


def _with_scope(header: dict[str, Any], scope: TypePatterns | None) -> dict[str, Any]:
    """A forwarded request of a scoped key carries its patterns, which the owner applies
    (operations.SCOPE_FIELD, routing.py rule 5)."""
    if scope is not None:
        header["_scope"] = list(scope.patterns)
    return header


class ScheduleOperations:
    shard: ShardServer
    engine: Engine
    forwarded: bool
    routed: bool

    def _owner_elsewhere(self, name: str) -> int | None:
        """The schedule's owner when it is another shard this one must forward to."""
        if not self.routed:
            return None
        owner = schedule_owner(name, self.shard.shards)
        return None if owner == self.shard.index else owner

    async def _forward(self, owner: int, msg_type: MsgType, header: dict[str, Any],
                       blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
        assert self.shard.peers is not None
        answer, out = await self.shard.peers.request(owner, msg_type, header, blob)
        return {k: v for k, v in answer.items() if k != "rid"}, out

    def _scoped(self, who: Identity, operation: str, s: Schedule) -> Schedule:
        scope = who.scope(operation)
        if scope is not None and not scope.matches(s.spec.type):
            raise NotFound(f"no schedule {s.name!r}")  # a scoped key learns nothing of others
        return s

    # -- requests ---------------------------------------------------------------------

    def schedule_add(self, who: Identity, spec: ScheduleSpec) -> Result[dict[str, Any]]:
        who.require("schedule_add")
        scope = who.scope("schedule_add")
        if scope is not None and not scope.matches(spec.type):
            raise Forbidden(f"type: this API key may not schedule tasks of type {spec.type!r}")
        self._log("SCHEDULE_ADD %r (%s, type %s) by API key %r", spec.name,
                  spec.cron if spec.cron is not None else f"every {spec.every_ms} ms", spec.type, who.name)
        owner = self._owner_elsewhere(spec.name)
        if owner is not None:
            return self._forward_one(owner, MsgType.SCHEDULE_ADD,
                                     _with_scope(schedule_add_header(spec), scope), spec.payload)
        self.shard.check_writable()
        if spec.replace and scope is not None:  # a scoped key replaces only what it could see
            old = self.engine.schedule_find(spec.name)
            if old is not None and not scope.matches(old.spec.type):
                raise Forbidden(f"name: schedule {spec.name!r} is of a type this API key may not touch")
        s = self.engine.schedule_add(spec, now_ms())
        return {"schedule": s.to_wire(self.shard.index)}

    def schedule_remove(self, who: Identity, name: str) -> Result[dict[str, Any]]:
        who.require("schedule_remove")
        self._log("SCHEDULE_REMOVE %r by API key %r", name, who.name)
        owner = self._owner_elsewhere(name)
        if owner is not None:
            return self._forward_one(owner, MsgType.SCHEDULE_REMOVE,
                                     _with_scope({"name": name}, who.scope("schedule_remove")))
        self.shard.check_writable()
        self._scoped(who, "schedule_remove", self.engine.schedule_get(name))
        self.engine.schedule_remove(name)
        return {"name": name, "removed": True}

    def schedule_pause(self, who: Identity, name: str, paused: bool) -> Result[dict[str, Any]]:
        who.require("schedule_pause")
        self._log("SCHEDULE_PAUSE %r paused=%s by API key %r", name, paused, who.name)
        owner = self._owner_elsewhere(name)
        if owner is not None:
            return self._forward_one(owner, MsgType.SCHEDULE_PAUSE, _with_scope(
                {"name": name, "paused": paused}, who.scope("schedule_pause")))
        self.shard.check_writable()
        self._scoped(who, "schedule_pause", self.engine.schedule_get(name))
        s = self.engine.schedule_pause(name, paused, now_ms())
        return {"schedule": s.to_wire(self.shard.index)}

    def schedule_show(self, who: Identity, name: str) -> Result[tuple[dict[str, Any], bytes]]:
        """One schedule, and its payload (the blob)."""
        who.require("schedule_list")
        owner = self._owner_elsewhere(name)
        if owner is not None:
            return self._forward(owner, MsgType.SCHEDULE_LIST,
                                 _with_scope({"name": name}, who.scope("schedule_list")))
        s = self._scoped(who, "schedule_list", self.engine.schedule_get(name))
        return {"schedules": [s.to_wire(self.shard.index)]}, s.spec.payload

    def schedule_list(self, who: Identity) -> Result[tuple[dict[str, Any], bytes]]:
        """Every schedule of every shard, by name."""
        who.require("schedule_list")
        scope = who.scope("schedule_list")
        mine = self._local_list(scope)
        if not self.routed:
            return {"schedules": mine}, b""
        return self._list_everywhere(mine, _with_scope({}, scope))

    # -- helpers ------------------------------------------------------------------------

    def _log(self, fmt: str, *args: Any) -> None:
        """An operator's change, logged once: by the shard that received it (as CANCEL is)."""
        if not self.forwarded:
            log.info(fmt, *args)

    def _local_list(self, scope: TypePatterns | None) -> list[dict[str, Any]]:
        return [s.to_wire(self.shard.index) for s in self.engine.schedule_list()
                if scope is None or scope.matches(s.spec.type)]

    async def _forward_one(self, owner: int, msg_type: MsgType, header: dict[str, Any],
                           blob: bytes = b"") -> dict[str, Any]:
        answer, _ = await self._forward(owner, msg_type, header, blob)
        return answer

    async def _list_everywhere(self, mine: list[dict[str, Any]],
                               header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        assert self.shard.peers is not None
        others = list(self.shard.peers.others())
        answers = await asyncio.gather(*(self._forward(i, MsgType.SCHEDULE_LIST, header) for i in others),
                                       return_exceptions=True)
        merged = list(mine)
        down: list[int] = []
        for shard, answer in zip(others, answers):
            if isinstance(answer, WireError):
                down.append(shard)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                merged.extend(answer[0].get("schedules") or [])
        body: dict[str, Any] = {"schedules": sorted(merged, key=lambda s: s["name"])}
        if down:
            body["unavailable_shards"] = sorted(down)
        return body, b""
