"""The TCP requests outside the hot path (workers' HEARTBEAT/REGISTER/DEREGISTER, QUERY_STATUS,
CANCEL, LIST_TASKS, GET_STATS, REQUEUE): parse, run the operation, answer.

`SessionRequests` is a mixin of `Session` (session.py), which owns framing, backpressure and the
answer path; each handler here is three lines: parse the header (protocol/requests.py), call the
operations layer with the session's identity, hand the result to ``_answer`` with the function
that builds its body (answers.py). A new request type adds its handler here (or in a mixin of its
own, for a family of requests) and one entry in ``Session._handlers``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq.protocol import requests as rq
from shardq.protocol.frames import Message
from shardq.server import answers, dep_results
from shardq.server.answers import Body
from shardq.task import id_to_str

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations


class SessionRequests:
    ops: Operations
    peer: bool

    if TYPE_CHECKING:  # defined by Session (session.py)
        def _who(self, msg: Message) -> Identity: ...
        def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None: ...
        def _ack(self, rid: int | None, body: dict[str, Any], blob: bytes = b"") -> None: ...

    def on_heartbeat(self, msg: Message) -> None:
        worker_id, info, active = rq.parse_heartbeat(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.heartbeat(who, worker_id, info, active), answers.heartbeat)

    def on_register(self, msg: Message) -> None:
        worker_id, info = rq.parse_register(msg.header)
        who = self._who(msg)
        self.ops.register(who, worker_id, info)
        self._ack(msg.rid, {})

    def on_deregister(self, msg: Message) -> None:
        worker_id = rq.parse_deregister(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.deregister(who, worker_id), answers.released)

    def on_worker_control(self, msg: Message) -> None:
        worker_id, action = rq.parse_worker_control(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.worker_control(who, worker_id, action), answers.as_is)

    def on_query(self, msg: Message) -> None:
        if self.peer and "_dep_results" in msg.header:  # another shard's CLAIM (dep_results.py)
            self._ack(msg.rid, *dep_results.serve(self.ops, msg.header))
            return
        ids, with_result, with_payload = rq.parse_query(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.query(who, ids, with_result, with_payload), answers.queried)

    def on_cancel(self, msg: Message) -> None:
        raw = rq.parse_cancel(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.cancel(who, raw),
                     lambda status: ({"id": id_to_str(raw), "status": status}, b""))

    def on_list(self, msg: Message) -> None:
        status, task_type, lo, hi, limit, cursor = rq.parse_list(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.list_tasks(who, status, task_type, lo, hi, limit, cursor),
                     answers.page)

    def on_stats(self, msg: Message) -> None:
        detail = rq.parse_stats(msg.header)  # workers_detail: a shardq extension
        who = self._who(msg)
        self._answer(msg.rid, self.ops.stats(who, detail), answers.as_is)

    def on_requeue(self, msg: Message) -> None:
        ids, status, task_type, limit = rq.parse_requeue(msg.header)
        who = self._who(msg)
        self._answer(msg.rid, self.ops.requeue(who, ids, status, task_type, limit), answers.as_is)
