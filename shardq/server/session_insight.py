"""The TCP requests of the insight extensions (DLQ_GROUPS, DELETE, BULK, SEARCH, TYPE_STATS):
parse (protocol/insight.py), run the operation (insight_ops.py), answer. A mixin of ``Session``,
as session_requests.py is; each handler is registered in ``Session._handlers``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq.protocol import insight as rq
from shardq.protocol.frames import Message, MsgType
from shardq.server import answers, insight_ops
from shardq.server.answers import Body

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations


class SessionInsight:
    ops: Operations

    if TYPE_CHECKING:  # defined by Session (session.py)
        def _who(self, msg: Message) -> Identity: ...
        def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None: ...

    def insight_handlers(self) -> dict[MsgType, Callable[[Message], None]]:
        return {MsgType.DLQ_GROUPS: self.on_dlq_groups, MsgType.DELETE: self.on_delete,
                MsgType.BULK: self.on_bulk, MsgType.SEARCH: self.on_search,
                MsgType.TYPE_STATS: self.on_type_stats}

    def on_dlq_groups(self, msg: Message) -> None:
        task_type = rq.parse_type_only(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, insight_ops.dlq_groups(self.ops, who, task_type), answers.as_is)

    def on_delete(self, msg: Message) -> None:
        ids = rq.parse_delete(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, insight_ops.delete(self.ops, who, ids), answers.as_is)

    def on_bulk(self, msg: Message) -> None:
        action, flt, limit, dry_run = rq.parse_bulk(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, insight_ops.bulk(self.ops, who, action, flt, limit, dry_run), answers.as_is)

    def on_search(self, msg: Message) -> None:
        q, limit, cursor = rq.parse_search(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, insight_ops.search(self.ops, who, q, limit, cursor), answers.as_is)

    def on_type_stats(self, msg: Message) -> None:
        task_type = rq.parse_type_only(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, insight_ops.type_stats(self.ops, who, task_type), answers.as_is)
