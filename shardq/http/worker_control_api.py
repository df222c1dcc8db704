"""The HTTP routes of quiet/stop (extension worker_control): ``POST /api/v1/workers/{id}/quiet``
and ``/stop``. A mixin of ``Api`` (api.py): decode, call ``Operations.worker_control``, encode."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from shardq.errors import BadRequest
from shardq.http import schema as s

if TYPE_CHECKING:
    from aiohttp import web

    from shardq.server.operations import Identity, Operations


class WorkerControlApi:
    ops: Operations

    async def quiet_worker(self, who: Identity, params: dict[str, str], query: None, body: None,
                           request: web.BaseRequest) -> s.WorkerCommanded:
        return await self._command(who, params, "quiet")

    async def stop_worker(self, who: Identity, params: dict[str, str], query: None, body: None,
                          request: web.BaseRequest) -> s.WorkerCommanded:
        return await self._command(who, params, "stop")

    async def _command(self, who: Identity, params: dict[str, str], action: str) -> s.WorkerCommanded:
        wid = params["worker_id"]
        if not 0 < len(wid) <= 255:
            raise BadRequest(f"worker_id: must be 1..255 characters, got {len(wid)}")
        result: Any = self.ops.worker_control(who, wid, action)
        if inspect.isawaitable(result):
            result = await result
        return s.WorkerCommanded(worker_id=result["worker_id"], command=result["command"],
                                 state=result["state"])
