"""The HTTP handlers of the per-type controls: a mixin of ``Api`` (api.py), each translating
one route into one Operations call (server/control_ops.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from msgspec import UNSET

from shardq.errors import BadRequest
from shardq.http.control_schema import ControlsQuery, Limits
from shardq.protocol.controls import UNSET as KEEP
from shardq.server.operations import settled

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations


def _type(params: dict[str, str]) -> str:
    t = params["task_type"]
    if not 0 < len(t) <= 255:
        raise BadRequest(f"type: must be 1..255 characters, got {len(t)}")
    return t




class ApiControls:
    ops: Operations

    async def pause_type(self, who: Identity, params: dict[str, str], query: None, body: None,
                         request: web.BaseRequest) -> dict[str, Any]:
        return dict(await settled(self.ops.pause_type(who, _type(params))))

    async def resume_type(self, who: Identity, params: dict[str, str], query: None, body: None,
                          request: web.BaseRequest) -> dict[str, Any]:
        return dict(await settled(self.ops.resume_type(who, _type(params))))

    async def set_limits(self, who: Identity, params: dict[str, str], query: None, body: Limits,
                         request: web.BaseRequest) -> dict[str, Any]:
        given = {k: getattr(body, k) for k in ("max_concurrency", "rate", "burst")}
        if all(v is UNSET for v in given.values()):
            raise BadRequest("body: give at least one of max_concurrency, rate, burst (null clears one)")
        cap, rate, burst = (KEEP if v is UNSET else v for v in given.values())
        return dict(await settled(self.ops.set_limits(who, _type(params), cap, rate, burst)))

    async def get_controls(self, who: Identity, params: dict[str, str], query: ControlsQuery, body: None,
                           request: web.BaseRequest) -> dict[str, Any]:
        t = None if query.type is UNSET else query.type
        return dict(await settled(self.ops.get_controls(who, t)))
