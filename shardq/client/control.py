"""Client helpers for the extensions cancel_running and worker_control: the HEARTBEAT answer as
an object, WORKER_CONTROL's request, and the check that the server speaks an extension.

A request type the server does not know is a framing error that closes the connection
(docs/protocol.md), so a client asks HELLO's ``features`` before it sends WORKER_CONTROL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shardq.errors import ShardqError
from shardq.protocol.frames import Message


class NotSupported(ShardqError):
    """The server does not announce the protocol extension this call needs (an older server)."""


def require_feature(info: dict[str, Any], name: str) -> None:
    if name not in (info.get("features") or ()):
        raise NotSupported(f"the server ({info.get('server', 'unknown version')}) does not support "
                           f"the {name!r} extension; upgrade it")


@dataclass(slots=True)
class HeartbeatAnswer:
    """What a HEARTBEAT brings back: the new lease expiry, the listed leases this worker lost,
    those of them revoked by CANCEL (stop their handlers), and a quiet/stop order."""

    lease_expires_ms: int
    lost: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    command: str | None = None


def parse_beat(msg: Message) -> HeartbeatAnswer:
    h = msg.header
    command = h.get("command")
    return HeartbeatAnswer(int(h["lease_expires_ms"]), list(h.get("lost") or ()),
                           list(h.get("cancelled") or ()),
                           command if command in ("quiet", "stop") else None)


def worker_control_header(worker_id: str, action: str) -> dict[str, Any]:
    if action not in ("quiet", "stop"):
        raise ValueError(f"action must be quiet or stop, got {action!r}")
    return {"worker_id": worker_id, "action": action}


def parse_commanded(msg: Message) -> dict[str, Any]:
    return {k: msg.header.get(k) for k in ("worker_id", "command", "state")}


__all__ = ["HeartbeatAnswer", "NotSupported", "parse_beat", "parse_commanded", "require_feature",
           "worker_control_header"]
