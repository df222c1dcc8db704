"""The HTTP API's schedule requests: a mixin of ``Api`` (api.py) that only translates, as
session_schedules.py does for TCP: a body becomes a ScheduleSpec, the operation runs
(server/schedule_ops.py), its answer becomes JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from msgspec import UNSET

from shardq.errors import BadRequest
from shardq.http import schedule_schema as ss
from shardq.protocol.schedules import parse_name
from shardq.schedule_specs import ScheduleSpec
from shardq.server.operations import settled

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations




def _name(params: dict[str, str]) -> str:
    return parse_name({"name": params["name"]})


class ScheduleApi:
    ops: Operations

    if TYPE_CHECKING:  # defined in api.py
        @staticmethod
        def _payload_of(raw: Any, text: Any, b64: Any, where: str, name: str) -> bytes: ...
        @staticmethod
        def _render(data: bytes, encoding: str, name: str, into: dict[str, Any]) -> None: ...

    async def add_schedule(self, who: Identity, params: dict[str, str], query: None,
                           body: ss.NewSchedule, request: web.BaseRequest) -> dict[str, Any]:
        spec = ScheduleSpec(
            name=body.name, type=body.type,
            payload=self._payload_of(body.payload, body.payload_text, body.payload_b64, "", "payload"),
            cron=_opt(body.cron), every_ms=_opt(body.every_ms), timezone=body.timezone,
            priority=_opt(body.priority), max_retries=_opt(body.max_retries),
            timeout_seconds=_opt(body.timeout_seconds), misfire=body.misfire,
            misfire_grace_ms=body.misfire_grace_ms, paused=body.paused, replace=body.replace)
        if (spec.cron is None) == (spec.every_ms is None):
            raise BadRequest("body: cron, every_ms: give exactly one of them")
        return dict(await settled(self.ops.schedule_add(who, spec)))

    async def list_schedules(self, who: Identity, params: dict[str, str], query: None, body: None,
                             request: web.BaseRequest) -> dict[str, Any]:
        answer, _ = await settled(self.ops.schedule_list(who))
        return dict(answer)

    async def get_schedule(self, who: Identity, params: dict[str, str], query: None, body: None,
                           request: web.BaseRequest) -> dict[str, Any]:
        answer, payload = await settled(self.ops.schedule_show(who, _name(params)))
        out = dict(answer["schedules"][0])
        self._render(payload, "auto", "payload", out)
        return out

    async def remove_schedule(self, who: Identity, params: dict[str, str], query: None, body: None,
                              request: web.BaseRequest) -> dict[str, Any]:
        return dict(await settled(self.ops.schedule_remove(who, _name(params))))

    async def pause_schedule(self, who: Identity, params: dict[str, str], query: None, body: None,
                             request: web.BaseRequest) -> dict[str, Any]:
        return dict(await settled(self.ops.schedule_pause(who, _name(params), True)))

    async def resume_schedule(self, who: Identity, params: dict[str, str], query: None, body: None,
                              request: web.BaseRequest) -> dict[str, Any]:
        return dict(await settled(self.ops.schedule_pause(who, _name(params), False)))


def _opt(value: Any) -> Any:
    return None if value is UNSET else value
