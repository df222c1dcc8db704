"""Periodic schedules from the clients: ``Client.schedule_add(...)`` and friends.

One pure part (the request headers and answer parsing) and two thin mixins, ``ScheduleMethods``
for the blocking ``Client`` and ``AsyncScheduleMethods`` for ``AsyncClient``, so that the two
cannot drift apart. Each request goes on the home connection; the server routes it to the
schedule's owner shard. A server without the ``schedules`` feature (HELLO's ``features``) is
told apart before anything is sent: an older server would close the connection on an unknown
message type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.client import requests as rq
from shardq.client.models import to_bytes
from shardq.errors import ShardqError
from shardq.protocol.frames import Message, MsgType
from shardq.protocol.schedules import schedule_add_header
from shardq.schedule_specs import ScheduleSpec

FEATURE = "schedules"


def add_request(name: str, type: str, payload: Any = None, *, cron: str | None = None,
                every: float | None = None, timezone: str = "UTC", priority: int | None = None,
                max_retries: int | None = None, timeout_seconds: int | None = None,
                misfire: str = "skip", misfire_grace: float = 60.0, paused: bool = False,
                replace: bool = False) -> tuple[dict[str, Any], bytes]:
    """SCHEDULE_ADD's header and blob. ``every`` and ``misfire_grace`` are in seconds."""
    spec = ScheduleSpec(name=name, type=type, payload=to_bytes(payload), cron=cron,
                        every_ms=None if every is None else int(round(every * 1000)),
                        timezone=timezone, priority=priority, max_retries=max_retries,
                        timeout_seconds=timeout_seconds, misfire=misfire,
                        misfire_grace_ms=int(round(misfire_grace * 1000)), paused=paused, replace=replace)
    return schedule_add_header(spec), spec.payload


def check_feature(info: dict[str, Any]) -> None:
    if FEATURE not in (info.get("features") or ()):
        raise ShardqError(f"this server ({info.get('server', 'unknown')}) does not support schedules: "
                          f"its HELLO features are {info.get('features') or []}; upgrade it")


def one(msg: Message) -> dict[str, Any]:
    return dict(rq.body(msg.header)["schedule"])


def shown(msg: Message) -> dict[str, Any]:
    """SCHEDULE_LIST with a name: the schedule, with its payload (the blob) as ``payload``."""
    out = dict(rq.body(msg.header)["schedules"][0])
    out["payload"] = msg.blob
    return out


class ScheduleMethods:
    """The blocking client's schedule calls (a mixin of ``Client``)."""

    if TYPE_CHECKING:  # defined by Client (sync.py)
        server_info: dict[str, Any]
        def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                 timeout: float | None = None, lane: Any = None) -> Message: ...
        def connect(self) -> Any: ...

    def _schedules_call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"") -> Message:
        if not self.server_info:
            self.connect()
        check_feature(self.server_info)
        return self.call(msg_type, header, blob)

    def schedule_add(self, name: str, type: str, payload: Any = None, **options: Any) -> dict[str, Any]:
        """Add a periodic schedule: ``cron="*/5 * * * *"`` (5 fields, or 6 with seconds first)
        or ``every=30`` (seconds); ``timezone``, ``priority``, ``max_retries``,
        ``timeout_seconds``, ``misfire`` ("skip" | "once"), ``misfire_grace`` (seconds),
        ``paused``, ``replace``. Returns the schedule as stored (with ``next_ms``)."""
        header, blob = add_request(name, type, payload, **options)
        return one(self._schedules_call(MsgType.SCHEDULE_ADD, header, blob))

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule of the server, by name (``unavailable_shards`` in the raw answer)."""
        return list(rq.body(self._schedules_call(MsgType.SCHEDULE_LIST, {}).header)["schedules"])

    def schedule(self, name: str) -> dict[str, Any]:
        """One schedule, with its ``payload`` (bytes); NotFound if there is none."""
        return shown(self._schedules_call(MsgType.SCHEDULE_LIST, {"name": name}))

    def schedule_remove(self, name: str) -> None:
        self._schedules_call(MsgType.SCHEDULE_REMOVE, {"name": name})

    def schedule_pause(self, name: str) -> dict[str, Any]:
        return one(self._schedules_call(MsgType.SCHEDULE_PAUSE, {"name": name, "paused": True}))

    def schedule_resume(self, name: str) -> dict[str, Any]:
        return one(self._schedules_call(MsgType.SCHEDULE_PAUSE, {"name": name, "paused": False}))


class AsyncScheduleMethods:
    """The asyncio client's schedule calls (a mixin of ``AsyncClient``)."""

    if TYPE_CHECKING:  # defined by AsyncClient (aio.py)
        server_info: dict[str, Any]
        async def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                       timeout: float | None = None, lane: Any = None) -> Message: ...
        async def connect(self) -> Any: ...

    async def _schedules_call(self, msg_type: MsgType, header: dict[str, Any],
                              blob: bytes = b"") -> Message:
        if not self.server_info:
            await self.connect()
        check_feature(self.server_info)
        return await self.call(msg_type, header, blob)

    async def schedule_add(self, name: str, type: str, payload: Any = None,
                           **options: Any) -> dict[str, Any]:
        """As ``Client.schedule_add``."""
        header, blob = add_request(name, type, payload, **options)
        return one(await self._schedules_call(MsgType.SCHEDULE_ADD, header, blob))

    async def schedules(self) -> list[dict[str, Any]]:
        return list(rq.body((await self._schedules_call(MsgType.SCHEDULE_LIST, {})).header)["schedules"])

    async def schedule(self, name: str) -> dict[str, Any]:
        return shown(await self._schedules_call(MsgType.SCHEDULE_LIST, {"name": name}))

    async def schedule_remove(self, name: str) -> None:
        await self._schedules_call(MsgType.SCHEDULE_REMOVE, {"name": name})

    async def schedule_pause(self, name: str) -> dict[str, Any]:
        return one(await self._schedules_call(MsgType.SCHEDULE_PAUSE, {"name": name, "paused": True}))

    async def schedule_resume(self, name: str) -> dict[str, Any]:
        return one(await self._schedules_call(MsgType.SCHEDULE_PAUSE, {"name": name, "paused": False}))
