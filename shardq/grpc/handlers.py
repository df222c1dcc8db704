"""The RPCs of proto/shardq/v1/shardq.proto: one method each, on the bundled AsyncClient that
speaks for the caller's key (calls.py says what wraps every one).

Adding an operation: its rpc and messages in the .proto (scripts/gen_proto), then one method here
named as the rpc, decorated with ``unary`` or ``streaming``, calling the client.

The claim stream (``ClaimStream``): the gateway claims with a long poll of ``STREAM_POLL_S`` for
as many tasks as the stream has room for (``max_in_flight`` less what it delivered and the worker
has not reported through ``ReportResults`` or lost per ``Heartbeat``), once a quarter of it is
free (``Flow``), and sends what each claim brings as one message.
When the stream ends (the worker cancelled it, or went away, or the gateway drains: then the stream
ends UNAVAILABLE), what it delivered and was not reported is released at once, and so is whatever
a claim still in flight brings back. A drain ends WatchTask streams UNAVAILABLE too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shardq.client import requests as rq
from shardq.client.aio import AsyncClient
from shardq.client.models import TaskInfo
from shardq.errors import BadRequest, NotFound, Unavailable
from shardq.grpc import convert
from shardq.grpc.calls import Gate, streaming, unary
from shardq.protocol.frames import MsgType
from shardq.v1 import tasks_pb2 as tpb
from shardq.v1 import tasks_pb2_grpc, workers_pb2_grpc
from shardq.v1 import workers_pb2 as wpb

log = logging.getLogger("shardq.grpc")

STREAM_POLL_S = 5.0        # a claim stream's long poll: also how long its end may wait for one
MAX_IN_FLIGHT = 1000       # as CLAIM's max
WATCH_POLL_MS = 50         # WatchTask's default, as the client's wait()
WATCH_MIN_POLL_MS = 10
TERMINAL = frozenset(("completed", "dead_letter", "cancelled"))
DRAINING = "the gRPC gateway is shutting down: call again (another server, or this one once restarted)"
Ctx = grpc.aio.ServicerContext


class TasksService(tasks_pb2_grpc.TasksServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @unary
    async def Submit(self, request: tpb.SubmitRequest, client: AsyncClient, context: Ctx) -> tpb.SubmitResponse:
        ids, duplicates = await client.submit_many_detailed([convert.job(request.task, "task")])
        return tpb.SubmitResponse(id=ids[0], duplicate=bool(duplicates))

    @unary
    async def SubmitBatch(self, request: tpb.SubmitBatchRequest, client: AsyncClient,
                          context: Ctx) -> tpb.SubmitBatchResponse:
        if not request.tasks:
            raise BadRequest("tasks: give 1 or more tasks")
        jobs = [convert.job(spec, f"tasks[{i}]") for i, spec in enumerate(request.tasks)]
        ids, duplicates = await client.submit_many_detailed(jobs)
        return tpb.SubmitBatchResponse(ids=ids, duplicates=duplicates)

    @unary
    async def GetTasks(self, request: tpb.GetTasksRequest, client: AsyncClient, context: Ctx) -> tpb.GetTasksResponse:
        ids = list(request.ids)
        found = await client.status_many(ids, with_result=request.with_result)
        return tpb.GetTasksResponse(tasks=[
            tpb.TaskOrMissing(id=i, found=info is not None, task=convert.task(info) if info else None)
            for i, info in zip(ids, found)])

    @unary
    async def ListTasks(self, request: tpb.ListTasksRequest, client: AsyncClient,
                        context: Ctx) -> tpb.ListTasksResponse:
        header: dict[str, Any] = {"status": request.status or "pending", "limit": request.page_size or 100}
        if request.type:
            header["type"] = request.type
        if request.HasField("min_priority"):
            header["min_priority"] = request.min_priority
        if request.HasField("max_priority"):
            header["max_priority"] = request.max_priority
        if request.cursor:
            header["cursor"] = request.cursor
        page = (await client.call(MsgType.LIST_TASKS, header)).header
        return tpb.ListTasksResponse(tasks=[convert.task(TaskInfo.from_wire(t)) for t in page["tasks"]],
                                    next_cursor=page.get("cursor") or "")

    @unary
    async def CancelTask(self, request: tpb.CancelTaskRequest, client: AsyncClient,
                         context: Ctx) -> tpb.CancelTaskResponse:
        await client.cancel(request.id)
        return tpb.CancelTaskResponse()

    @unary
    async def RequeueTasks(self, request: tpb.RequeueTasksRequest, client: AsyncClient,
                           context: Ctx) -> tpb.RequeueTasksResponse:
        answer = await client.requeue(list(request.ids) or None, status=request.status or "dead_letter",
                                      type=request.type or None,
                                      limit=request.limit if request.HasField("limit") else None)
        return tpb.RequeueTasksResponse(requeued=int(answer.get("requeued", 0)), detail=convert.struct(answer))

    @streaming
    async def WatchTask(self, request: tpb.WatchTaskRequest, client: AsyncClient,
                        context: Ctx) -> AsyncIterator[tpb.TaskEvent]:
        poll = max(WATCH_MIN_POLL_MS, request.poll_ms or WATCH_POLL_MS) / 1000
        last: tuple[Any, ...] | None = None
        while True:
            if self.gate.draining.is_set():
                raise Unavailable(DRAINING)
            info = await client.status(request.id, with_result=True)
            if info is None:
                raise NotFound(f"no task {request.id}")
            now = (info.status, info.attempt, info.retry_count, info.worker_id)
            terminal = info.status in TERMINAL
            if now != last:
                yield tpb.TaskEvent(task=convert.task(info), terminal=terminal)
                last = now
            if terminal:
                return
            await asyncio.sleep(poll)

    @unary
    async def GetStats(self, request: tpb.GetStatsRequest, client: AsyncClient, context: Ctx) -> tpb.GetStatsResponse:
        return tpb.GetStatsResponse(stats=convert.struct(await client.stats()))

    @unary
    async def ListWorkers(self, request: tpb.ListWorkersRequest, client: AsyncClient,
                          context: Ctx) -> tpb.ListWorkersResponse:
        return tpb.ListWorkersResponse(workers=[convert.worker(w) for w in await client.workers()])


class Flow:
    """One claim stream's tasks delivered and not yet reported, and its room for more: it claims
    again once a quarter of ``limit`` (at least 1) is free, so that a stream refilled by one report
    at a time does not turn into one CLAIM per task."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refill_at = limit - max(1, limit // 4)  # claim again at or below this many held
        self.held: dict[str, TaskInfo] = {}
        self.room = asyncio.Event()
        self.room.set()

    def took(self, task: TaskInfo) -> None:
        self.held[task.id] = task
        if len(self.held) > self.refill_at:
            self.room.clear()

    def done(self, task_id: str) -> None:
        if self.held.pop(task_id, None) is not None and len(self.held) <= self.refill_at:
            self.room.set()


class WorkersService(workers_pb2_grpc.WorkersServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.flows: dict[str, set[Flow]] = {}   # worker id -> its open claim streams
        self._cleanups: set[asyncio.Task[None]] = set()

    @unary
    async def RegisterWorker(self, request: wpb.RegisterWorkerRequest, client: AsyncClient,
                             context: Ctx) -> wpb.RegisterWorkerResponse:
        info: dict[str, Any] = {}
        for name in ("hostname", "pid", "concurrency"):
            if getattr(request, name):  # 0 and "" are unset in proto3
                info[name] = getattr(request, name)
        if request.types:
            info["types"] = list(request.types)
        await client.register_worker(request.worker_id, **info)
        return wpb.RegisterWorkerResponse()

    @unary
    async def Claim(self, request: wpb.ClaimRequest, client: AsyncClient, context: Ctx) -> wpb.ClaimResponse:
        wait = request.wait_ms / 1000
        left = context.time_remaining()
        if left is not None:
            wait = max(0.0, min(wait, left - 0.1))  # answer (empty) before the caller gives up
        tasks = await client.claim(request.worker_id, max=request.max or 1, wait=wait,
                                   types=list(request.types) or None)
        return wpb.ClaimResponse(tasks=[wpb.ClaimedTask(task=convert.task(t)) for t in tasks])

    @streaming
    async def ClaimStream(self, request: wpb.ClaimStreamRequest, client: AsyncClient,
                          context: Ctx) -> AsyncIterator[wpb.ClaimResponse]:
        limit = request.max_in_flight or 1
        if limit > MAX_IN_FLIGHT:
            raise BadRequest(f"max_in_flight: must be 1..{MAX_IN_FLIGHT}, got {limit}")
        worker_id, types = request.worker_id, list(request.types) or None
        flow = Flow(limit)
        self.flows.setdefault(worker_id, set()).add(flow)
        claim: asyncio.Future[list[TaskInfo]] | None = None
        try:
            while True:
                room = asyncio.ensure_future(flow.room.wait())
                if await self.gate.until_draining(room) is None:
                    room.cancel()
                    raise Unavailable(DRAINING)
                claim = asyncio.ensure_future(client.claim(worker_id, max=limit - len(flow.held),
                                                           wait=STREAM_POLL_S, types=types))
                tasks = await self.gate.until_draining(claim)
                if tasks is None:
                    raise Unavailable(DRAINING)  # the claim in flight is released below
                claim = None
                for task in tasks:
                    flow.took(task)
                if tasks:
                    yield wpb.ClaimResponse(tasks=[wpb.ClaimedTask(task=convert.task(t)) for t in tasks])
        finally:
            streams = self.flows.get(worker_id)
            if streams is not None:
                streams.discard(flow)
                if not streams:
                    del self.flows[worker_id]
            cleanup = asyncio.get_running_loop().create_task(self._release(client, worker_id, flow, claim))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)

    async def _release(self, client: AsyncClient, worker_id: str, flow: Flow,
                       claim: asyncio.Future[list[TaskInfo]] | None) -> None:
        """A claim stream ended: its unreported tasks, and what its last claim brings, go back."""
        held = list(flow.held.values())
        if claim is not None:
            try:
                held += await claim
            except Exception:  # noqa: BLE001 - it failed: it leased nothing
                pass
        if not held:
            return
        try:
            await client.report(worker_id, [rq.released_item(t) for t in held])
            log.info("claim stream of %s ended: released %d task(s)", worker_id, len(held))
        except Exception as exc:  # noqa: BLE001 - the leases then expire as any lost worker's do
            log.warning("claim stream of %s ended: could not release %d task(s): %s", worker_id,
                        len(held), exc)

    def _forget(self, worker_id: str, ids: Any) -> None:
        for flow in self.flows.get(worker_id, ()):
            for task_id in ids:
                flow.done(task_id)

    @unary
    async def ReportResults(self, request: wpb.ReportResultsRequest, client: AsyncClient,
                            context: Ctx) -> wpb.ReportResultsResponse:
        items = [convert.result_item(r, f"results[{i}]") for i, r in enumerate(request.results)]
        answers = await client.report(request.worker_id, items)
        self._forget(request.worker_id, (r.id for r in request.results))
        return wpb.ReportResultsResponse(answers=[convert.result_answer(a) for a in answers])

    @unary
    async def Heartbeat(self, request: wpb.HeartbeatRequest, client: AsyncClient,
                        context: Ctx) -> wpb.HeartbeatResponse:
        info = {name: getattr(request, name) for name in ("cpu_percent", "memory_rss", "memory_percent")
                if request.HasField(name)}
        beat = await client.beat(request.worker_id, list(request.active) or None, **info)
        self._forget(request.worker_id, beat.lost)
        return wpb.HeartbeatResponse(lease_expires_ms=beat.lease_expires_ms, lost=beat.lost,
                                     cancelled=beat.cancelled, command=beat.command or "")

    @unary
    async def DeregisterWorker(self, request: wpb.DeregisterWorkerRequest, client: AsyncClient,
                               context: Ctx) -> wpb.DeregisterWorkerResponse:
        released = await client.deregister_worker(request.worker_id)
        return wpb.DeregisterWorkerResponse(released=released)

    async def close(self) -> None:
        await asyncio.gather(*self._cleanups, return_exceptions=True)


__all__ = ["TasksService", "WorkersService"]
