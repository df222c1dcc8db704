"""The HTTP handlers of the insight routes (insight_routes.py): a mixin of ``Api`` (api.py). Each
turns its body or query into the arguments of one operation of server/insight_ops.py, checked as
the TCP protocol checks them (protocol/insight.py), so that both transports refuse the same."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from shardq.http import insight_routes as r
from shardq.protocol import insight as iq
from shardq.protocol.requests import parse_id
from shardq.server import insight_ops
from shardq.server.operations import settled

if TYPE_CHECKING:
    from aiohttp import web

    from shardq.server.operations import Identity, Operations




def _fields(body: msgspec.Struct) -> dict[str, Any]:
    """A body as the TCP header it stands for (unset fields left out)."""
    return {k: v for k, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}


class TriageApi:
    ops: Operations

    async def dlq_groups(self, who: Identity, params: dict[str, str], query: r.TypeQuery, body: None,
                         request: web.BaseRequest) -> dict[str, Any]:
        return await settled(insight_ops.dlq_groups(self.ops, who, iq.parse_type_only(_fields(query))))

    async def delete_tasks(self, who: Identity, params: dict[str, str], query: None, body: r.Delete,
                           request: web.BaseRequest) -> dict[str, Any]:
        ids = [parse_id(i, f"ids[{n}]") for n, i in enumerate(body.ids)]
        return await settled(insight_ops.delete(self.ops, who, ids))

    async def bulk(self, who: Identity, params: dict[str, str], query: None, body: r.Bulk,
                   request: web.BaseRequest) -> dict[str, Any]:
        action, flt, limit, dry_run = iq.parse_bulk(_fields(body))
        return await settled(insight_ops.bulk(self.ops, who, action, flt, limit, dry_run))

    async def search(self, who: Identity, params: dict[str, str], query: None, body: r.Search | None,
                     request: web.BaseRequest) -> dict[str, Any]:
        q, limit, cursor = iq.parse_search({} if body is None else _fields(body))
        return await settled(insight_ops.search(self.ops, who, q, limit, cursor))

    async def type_stats(self, who: Identity, params: dict[str, str], query: r.TypeQuery, body: None,
                         request: web.BaseRequest) -> dict[str, Any]:
        return await settled(insight_ops.type_stats(self.ops, who, iq.parse_type_only(_fields(query))))
