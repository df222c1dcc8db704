"""The TCP handlers of the per-type controls (feature ``type-controls``): PAUSE_TYPE,
RESUME_TYPE, SET_LIMITS, GET_CONTROLS. Parse (protocol/controls.py), call the operation
(server/control_ops.py), answer. A mixin of Session, like session_requests.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq.protocol import controls as wire
from shardq.protocol.frames import Message, MsgType
from shardq.server import answers
from shardq.server.answers import Body

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations


class SessionControls:
    ops: Operations

    if TYPE_CHECKING:  # defined by Session (session.py)
        def _who(self, msg: Message) -> Identity: ...
        def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None: ...

    def control_handlers(self) -> dict[MsgType, Callable[[Message], None]]:
        return {MsgType.PAUSE_TYPE: self.on_pause_type, MsgType.RESUME_TYPE: self.on_resume_type,
                MsgType.SET_LIMITS: self.on_set_limits, MsgType.GET_CONTROLS: self.on_get_controls}

    def on_pause_type(self, msg: Message) -> None:
        task_type = wire.parse_type(msg.header)
        self._answer(msg.rid, self.ops.pause_type(self._who(msg), task_type), answers.as_is)

    def on_resume_type(self, msg: Message) -> None:
        task_type = wire.parse_type(msg.header)
        self._answer(msg.rid, self.ops.resume_type(self._who(msg), task_type), answers.as_is)

    def on_set_limits(self, msg: Message) -> None:
        if wire.APPLY_FIELD in msg.header:  # a record from its owner, over the mesh
            task_type, cap, rate, burst = msg.header.get("type", ""), None, None, None
        else:
            task_type, cap, rate, burst = wire.parse_set_limits(msg.header)
        self._answer(msg.rid, self.ops.set_limits(self._who(msg), task_type, cap, rate, burst, msg.header),
                     answers.as_is)

    def on_get_controls(self, msg: Message) -> None:
        task_type = wire.parse_get_controls(msg.header)
        self._answer(msg.rid, self.ops.get_controls(self._who(msg), task_type), answers.as_is)
