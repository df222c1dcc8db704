"""Helpers of the gRPC API tests: a channel with a key, stubs, polling health."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from shardq.testing import ServerProcess
from shardq.v1 import tasks_pb2_grpc, workers_pb2_grpc


class Api:
    """Stubs over one channel; ``key`` goes in every call's metadata."""

    def __init__(self, channel: grpc.Channel, key: str | None = None) -> None:
        self.channel = channel
        self.metadata = () if key is None else (("authorization", f"Bearer {key}"),)
        self.tasks = tasks_pb2_grpc.TasksStub(channel)
        self.workers = workers_pb2_grpc.WorkersStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def t(self, name: str, request: Any, **kw: Any) -> Any:
        return getattr(self.tasks, name)(request, metadata=self.metadata, timeout=kw.pop("timeout", 30), **kw)

    def w(self, name: str, request: Any, **kw: Any) -> Any:
        return getattr(self.workers, name)(request, metadata=self.metadata, timeout=kw.pop("timeout", 30), **kw)


def claimed(stream: Iterator[Any]) -> Iterator[Any]:
    """The tasks of a ClaimStream, one by one (each message holds what one claim leased)."""
    for message in stream:
        assert message.tasks, "a ClaimStream message without tasks"
        for item in message.tasks:
            yield item.task


def grpc_port(srv: ServerProcess) -> int:
    return int(srv.ready_fields["grpc_port"])


def until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except grpc.RpcError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def serving(api: Api, service: str = "") -> bool:
    answer = api.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded")


def details(err: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, by kind."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for detail in status.details if status is not None else ():
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                out[kind.__name__] = msg
    return out
