"""The RPCs of proto/shardq/v1/insight.proto (service ``Insight``): a task's history and
explanation, dead-letter groups, delete, bulk requeue/delete, search, per-type figures. One
method per RPC, each one call of the bundled AsyncClient that speaks for the caller's key
(calls.py wraps every one: keys, deadline, errors); the shards check fields and permissions.
"""

from __future__ import annotations

from typing import Any

import grpc

from shardq.client.aio import AsyncClient
from shardq.client.models import TaskInfo
from shardq.grpc import convert
from shardq.grpc.calls import Gate, unary
from shardq.protocol.frames import MsgType
from shardq.v1 import insight_pb2 as ipb
from shardq.v1 import insight_pb2_grpc

Ctx = grpc.aio.ServicerContext
SEARCH_RANGES = ("min_priority", "max_priority", "created_from", "created_to", "updated_from", "updated_to")


def history(answer: dict[str, Any]) -> ipb.HistoryResponse:
    timeline = answer["history"]
    events = [ipb.HistoryEvent(event=e["event"], t_ms=e["t_ms"],
                               fields=convert.struct({k: v for k, v in e.items() if k not in ("event", "t_ms")}))
              for e in timeline["events"]]
    out = ipb.HistoryResponse(id=answer["id"], type=answer["type"], status=answer["status"], events=events,
                              dropped=int(timeline.get("dropped") or 0))
    if timeline.get("dropped_after") is not None:
        out.dropped_after = timeline["dropped_after"]
    return out


def delete_result(item: dict[str, Any]) -> ipb.DeleteResult:
    err = item.get("error")
    if isinstance(err, dict):
        return ipb.DeleteResult(id=item.get("id", ""), deleted=False, error_code=str(err.get("code", "")),
                                error_message=str(err.get("message", "")))
    return ipb.DeleteResult(id=item.get("id", ""), deleted=item.get("status") == "deleted")


def bulk_filters(request: ipb.BulkRequest) -> dict[str, Any]:
    filters: dict[str, Any] = {name: getattr(request, name) or None for name in ("type", "group", "error")}
    for name in ("since_ms", "until_ms"):
        if request.HasField(name):
            filters[name] = getattr(request, name)
    return filters


def search_filters(request: ipb.SearchTasksRequest) -> dict[str, Any]:
    filters: dict[str, Any] = {"id_prefix": request.id_prefix or None, "type": request.type or None,
                               "error": request.error or None, "status": list(request.status) or None}
    for name in SEARCH_RANGES:
        if request.HasField(name):
            filters[name] = getattr(request, name)
    return filters


class InsightService(insight_pb2_grpc.InsightServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @unary
    async def GetHistory(self, request: ipb.TaskRef, client: AsyncClient, context: Ctx) -> ipb.HistoryResponse:
        return history(await client.history(request.id))

    @unary
    async def Explain(self, request: ipb.TaskRef, client: AsyncClient, context: Ctx) -> ipb.ExplainResponse:
        return convert.message(ipb.ExplainResponse, await client.explain(request.id))

    @unary
    async def DlqGroups(self, request: ipb.DlqGroupsRequest, client: AsyncClient,
                        context: Ctx) -> ipb.DlqGroupsResponse:
        answer = await client.dlq_groups(request.type or None)
        return ipb.DlqGroupsResponse(groups=[convert.message(ipb.DlqGroup, g) for g in answer["groups"]],
                                     total=int(answer.get("total") or 0))

    @unary
    async def DeleteTasks(self, request: ipb.DeleteTasksRequest, client: AsyncClient,
                          context: Ctx) -> ipb.DeleteTasksResponse:
        answer = await client.delete(list(request.ids))
        return ipb.DeleteTasksResponse(deleted=int(answer.get("deleted") or 0),
                                       results=[delete_result(r) for r in answer.get("results") or ()])

    @unary
    async def Bulk(self, request: ipb.BulkRequest, client: AsyncClient, context: Ctx) -> ipb.BulkResponse:
        answer = await client.bulk(request.action, status=request.status or "dead_letter", dry_run=request.dry_run,
                                   limit=request.limit if request.HasField("limit") else None,
                                   **bulk_filters(request))
        count = next((answer[k] for k in ("matched", "requeued", "deleted") if k in answer), 0)
        return ipb.BulkResponse(action=str(answer.get("action", request.action)),
                                dry_run=bool(answer.get("dry_run", request.dry_run)), count=int(count))

    @unary
    async def SearchTasks(self, request: ipb.SearchTasksRequest, client: AsyncClient,
                          context: Ctx) -> ipb.SearchTasksResponse:
        page = await client.search(limit=request.page_size or 100, cursor=request.cursor or None,
                                   **search_filters(request))
        return ipb.SearchTasksResponse(tasks=[convert.task(TaskInfo.from_wire(t)) for t in page["tasks"]],
                                       next_cursor=page.get("cursor") or "", scanned=int(page.get("scanned") or 0))

    @unary
    async def TypeStats(self, request: ipb.TypeStatsRequest, client: AsyncClient,
                        context: Ctx) -> ipb.TypeStatsResponse:
        # The whole answer (client.type_stats() keeps only the rows): window_s too.
        answer = (await client.call(MsgType.TYPE_STATS, {"type": request.type} if request.type else {})).header
        return ipb.TypeStatsResponse(types=[convert.message(ipb.TypeStat, row) for row in answer["types"]],
                                     window_s=answer.get("window_s") or ())


__all__ = ["InsightService", "bulk_filters", "delete_result", "history", "search_filters"]
