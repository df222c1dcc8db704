"""The TCP schedule requests (SCHEDULE_ADD, _LIST, _REMOVE, _PAUSE): parse, run the operation
(schedule_ops.py), answer. A mixin of `Session` (session.py), like session_requests.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq.protocol import schedules as sq
from shardq.protocol.frames import Message, MsgType
from shardq.server import answers
from shardq.server.answers import Body

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations


def _pair(answer: tuple[dict[str, Any], bytes]) -> Body:
    return answer


class SessionSchedules:
    ops: Operations

    if TYPE_CHECKING:  # defined by Session (session.py)
        def _who(self, msg: Message) -> Identity: ...
        def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None: ...

    def schedule_handlers(self) -> dict[MsgType, Callable[[Message], None]]:
        return {MsgType.SCHEDULE_ADD: self.on_schedule_add, MsgType.SCHEDULE_LIST: self.on_schedule_list,
                MsgType.SCHEDULE_REMOVE: self.on_schedule_remove,
                MsgType.SCHEDULE_PAUSE: self.on_schedule_pause}

    def on_schedule_add(self, msg: Message) -> None:
        spec = sq.parse_schedule_add(msg.header, msg.blob)
        self._answer(msg.rid, self.ops.schedule_add(self._who(msg), spec), answers.as_is)

    def on_schedule_list(self, msg: Message) -> None:
        name = sq.parse_schedule_list(msg.header)
        who = self._who(msg)
        result = self.ops.schedule_list(who) if name is None else self.ops.schedule_show(who, name)
        self._answer(msg.rid, result, _pair)

    def on_schedule_remove(self, msg: Message) -> None:
        name = sq.parse_schedule_remove(msg.header)
        self._answer(msg.rid, self.ops.schedule_remove(self._who(msg), name), answers.as_is)

    def on_schedule_pause(self, msg: Message) -> None:
        name, paused = sq.parse_schedule_pause(msg.header)
        self._answer(msg.rid, self.ops.schedule_pause(self._who(msg), name, paused), answers.as_is)
