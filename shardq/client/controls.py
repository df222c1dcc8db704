"""Per-type controls from the clients (feature ``type-controls``): pause and resume a task
type, set or clear its concurrency cap and rate, read them back. Mixins of ``Client`` and
``AsyncClient``; each method checks that the server announces the feature first, so that an
older server gives a clear error instead of closing the connection on an unknown message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.errors import ShardqError
from shardq.protocol.frames import MsgType

if TYPE_CHECKING:
    from shardq.protocol.frames import Message

FEATURE = "type-controls"
_KEEP: Any = object()  # a limit left as it is


class FeatureMissing(ShardqError):
    """The server does not speak a protocol extension this call needs."""


def _check(info: dict[str, Any]) -> None:
    if FEATURE not in (info.get("features") or ()):
        raise FeatureMissing(f"this server ({info.get('server', 'unknown')}) does not support "
                             f"'{FEATURE}' (pause, resume, limits); upgrade it")


def limits_header(task_type: str, max_concurrency: Any, rate: Any, burst: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"type": task_type}
    for key, value in (("max_concurrency", max_concurrency), ("rate", rate), ("burst", burst)):
        if value is not _KEEP:
            header[key] = value
    return header


def _body(msg: Message) -> dict[str, Any]:
    return {k: v for k, v in msg.header.items() if k != "rid"}


class ClientControls:
    """Mixin of the blocking Client (client/sync.py)."""

    if TYPE_CHECKING:
        server_info: dict[str, Any]
        def connect(self) -> Any: ...
        def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                 **kw: Any) -> Message: ...

    def _control_call(self, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        if not self.server_info:
            self.connect()
        _check(self.server_info)
        return _body(self.call(msg_type, header))

    def pause_type(self, task_type: str) -> dict[str, Any]:
        """Stop every shard from handing out tasks of ``task_type`` (submits still accepted).
        Returns ``{"control": {...}}``: the type's record as it is now."""
        return self._control_call(MsgType.PAUSE_TYPE, {"type": task_type})

    def resume_type(self, task_type: str) -> dict[str, Any]:
        """Undo ``pause_type``; InvalidState when the type is not paused."""
        return self._control_call(MsgType.RESUME_TYPE, {"type": task_type})

    def set_limits(self, task_type: str, *, max_concurrency: Any = _KEEP, rate: Any = _KEEP,
                   burst: Any = _KEEP) -> dict[str, Any]:
        """Set a limit (a value), clear it (None) or leave it (not given). ``rate``: claims per
        second for the whole broker; ``burst``: its bucket size."""
        return self._control_call(MsgType.SET_LIMITS, limits_header(task_type, max_concurrency, rate, burst))

    def clear_limits(self, task_type: str) -> dict[str, Any]:
        return self._control_call(MsgType.SET_LIMITS, limits_header(task_type, None, None, _KEEP))

    def controls(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Every paused or limited type (or just ``task_type``), with each shard's numbers."""
        header = {} if task_type is None else {"type": task_type}
        return list(self._control_call(MsgType.GET_CONTROLS, header)["controls"])


class AsyncClientControls:
    """Mixin of AsyncClient (client/aio.py)."""

    if TYPE_CHECKING:
        server_info: dict[str, Any]
        async def connect(self) -> Any: ...
        async def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                       **kw: Any) -> Message: ...

    async def _control_call(self, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        if not self.server_info:
            await self.connect()
        _check(self.server_info)
        return _body(await self.call(msg_type, header))

    async def pause_type(self, task_type: str) -> dict[str, Any]:
        return await self._control_call(MsgType.PAUSE_TYPE, {"type": task_type})

    async def resume_type(self, task_type: str) -> dict[str, Any]:
        return await self._control_call(MsgType.RESUME_TYPE, {"type": task_type})

    async def set_limits(self, task_type: str, *, max_concurrency: Any = _KEEP, rate: Any = _KEEP,
                         burst: Any = _KEEP) -> dict[str, Any]:
        return await self._control_call(MsgType.SET_LIMITS,
                                        limits_header(task_type, max_concurrency, rate, burst))

    async def clear_limits(self, task_type: str) -> dict[str, Any]:
        return await self._control_call(MsgType.SET_LIMITS, limits_header(task_type, None, None, _KEEP))

    async def controls(self, task_type: str | None = None) -> list[dict[str, Any]]:
        header = {} if task_type is None else {"type": task_type}
        return list((await self._control_call(MsgType.GET_CONTROLS, header))["controls"])
