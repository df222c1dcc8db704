"""The RPCs of proto/shardq/v1/operators.proto (service ``Operators``): per-type controls,
schedules, and quiet/stop orders to workers. One method per RPC, each one call of the bundled
AsyncClient that speaks for the caller's key (calls.py wraps every one: keys, deadline, errors),
so the shards check the fields, the permissions and the type scopes exactly as on TCP.

What the gateway checks itself is only what the protocol cannot express in proto3's shape: a
SetLimits field both set and cleared (``clear_*``), named as its field.
"""

from __future__ import annotations

from typing import Any

import grpc

from shardq.client.aio import AsyncClient
from shardq.errors import BadRequest
from shardq.grpc import convert
from shardq.grpc.calls import Gate, unary
from shardq.protocol.frames import MsgType
from shardq.v1 import operators_pb2 as opb
from shardq.v1 import operators_pb2_grpc

Ctx = grpc.aio.ServicerContext
LIMITS = ("max_concurrency", "rate", "burst")


def control_response(answer: dict[str, Any]) -> opb.ControlResponse:
    return opb.ControlResponse(control=convert.message(opb.TypeControl, answer["control"]),
                               not_reached=answer.get("not_reached") or ())


def control_state(row: dict[str, Any]) -> opb.ControlState:
    return opb.ControlState(control=convert.message(opb.TypeControl, row),
                            running=int(row.get("running") or 0), ready=int(row.get("ready") or 0),
                            shards=convert.struct(row.get("shards") or {}))


def limits(request: opb.SetLimitsRequest) -> dict[str, Any]:
    """SET_LIMITS's limits: a value given, None for one cleared; one left alone is absent."""
    out: dict[str, Any] = {}
    for name in LIMITS:
        clear = getattr(request, f"clear_{name}")
        if request.HasField(name) and clear:
            raise BadRequest(f"{name}: give a value or clear_{name}, not both")
        if request.HasField(name):
            out[name] = getattr(request, name)
        elif clear:
            out[name] = None
    return out


def schedule_options(request: opb.AddScheduleRequest) -> dict[str, Any]:
    """``AsyncClient.schedule_add``'s options (it takes seconds where the protocol takes ms)."""
    options: dict[str, Any] = {"cron": request.cron or None, "timezone": request.timezone or "UTC",
                               "misfire": request.misfire or "skip", "paused": request.paused,
                               "replace": request.replace}
    if request.HasField("every_ms"):
        options["every"] = request.every_ms / 1000
    if request.HasField("misfire_grace_ms"):
        options["misfire_grace"] = request.misfire_grace_ms / 1000
    for name in ("priority", "max_retries", "timeout_seconds"):
        if request.HasField(name):
            options[name] = getattr(request, name)
    return options


class OperatorsService(operators_pb2_grpc.OperatorsServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    # -- per-type controls (PAUSE_TYPE, RESUME_TYPE, SET_LIMITS, GET_CONTROLS) ----------------

    @unary
    async def PauseType(self, request: opb.PauseTypeRequest, client: AsyncClient,
                        context: Ctx) -> opb.ControlResponse:
        return control_response(await client.pause_type(request.type))

    @unary
    async def ResumeType(self, request: opb.ResumeTypeRequest, client: AsyncClient,
                         context: Ctx) -> opb.ControlResponse:
        return control_response(await client.resume_type(request.type))

    @unary
    async def SetLimits(self, request: opb.SetLimitsRequest, client: AsyncClient,
                        context: Ctx) -> opb.ControlResponse:
        return control_response(await client.set_limits(request.type, **limits(request)))

    @unary
    async def GetControls(self, request: opb.GetControlsRequest, client: AsyncClient,
                          context: Ctx) -> opb.GetControlsResponse:
        # The whole answer (client.controls() keeps only the rows): shards_down says it is partial.
        answer = (await client.call(MsgType.GET_CONTROLS, {"type": request.type} if request.type else {})).header
        return opb.GetControlsResponse(controls=[control_state(row) for row in answer["controls"]],
                                       shards_down=answer.get("shards_down") or ())

    # -- schedules (SCHEDULE_ADD, SCHEDULE_LIST, SCHEDULE_REMOVE, SCHEDULE_PAUSE) -------------

    @unary
    async def AddSchedule(self, request: opb.AddScheduleRequest, client: AsyncClient,
                          context: Ctx) -> opb.Schedule:
        added = await client.schedule_add(request.name, request.type, bytes(request.payload),
                                          **schedule_options(request))
        return convert.message(opb.Schedule, added)

    @unary
    async def ListSchedules(self, request: opb.ListSchedulesRequest, client: AsyncClient,
                            context: Ctx) -> opb.ListSchedulesResponse:
        # The whole answer (client.schedules() keeps only the list): unavailable_shards says it is partial.
        answer = (await client.call(MsgType.SCHEDULE_LIST, {})).header
        return opb.ListSchedulesResponse(schedules=[convert.message(opb.Schedule, s) for s in answer["schedules"]],
                                         unavailable_shards=answer.get("unavailable_shards") or ())

    @unary
    async def GetSchedule(self, request: opb.ScheduleName, client: AsyncClient, context: Ctx) -> opb.Schedule:
        return convert.message(opb.Schedule, await client.schedule(request.name))

    @unary
    async def RemoveSchedule(self, request: opb.ScheduleName, client: AsyncClient,
                             context: Ctx) -> opb.RemoveScheduleResponse:
        await client.schedule_remove(request.name)
        return opb.RemoveScheduleResponse()

    @unary
    async def PauseSchedule(self, request: opb.ScheduleName, client: AsyncClient, context: Ctx) -> opb.Schedule:
        return convert.message(opb.Schedule, await client.schedule_pause(request.name))

    @unary
    async def ResumeSchedule(self, request: opb.ScheduleName, client: AsyncClient, context: Ctx) -> opb.Schedule:
        return convert.message(opb.Schedule, await client.schedule_resume(request.name))

    # -- workers (WORKER_CONTROL) -------------------------------------------------------------

    @unary
    async def QuietWorker(self, request: opb.WorkerOrder, client: AsyncClient,
                          context: Ctx) -> opb.WorkerOrderResponse:
        return convert.message(opb.WorkerOrderResponse, await client.quiet_worker(request.worker_id))

    @unary
    async def StopWorker(self, request: opb.WorkerOrder, client: AsyncClient,
                         context: Ctx) -> opb.WorkerOrderResponse:
        return convert.message(opb.WorkerOrderResponse, await client.stop_worker(request.worker_id))


__all__ = ["OperatorsService", "control_response", "control_state", "limits", "schedule_options"]
