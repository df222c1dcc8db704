"""The insight methods of ``Client`` and ``AsyncClient``: dead-letter groups, delete, bulk
requeue/delete by group or filter (and its dry run), search, per-type figures.

The request headers are built once here (``*_header``) for both clients; each method checks the
server announced the extension in HELLO's ``features`` (protocol/features.py), so that an older
server is named as such instead of answering an unknown message type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from shardq.client.requests import body
from shardq.errors import ShardqError
from shardq.protocol.frames import Message, MsgType

_FILTER_KEYS = ("type", "group", "error", "since_ms", "until_ms")
_SEARCH_KEYS = ("id_prefix", "type", "status", "min_priority", "max_priority", "created_from",
                "created_to", "updated_from", "updated_to", "error")


def _require(info: dict[str, Any], feature: str) -> None:
    features = info.get("features")
    if info and features is not None and feature not in features:
        raise ShardqError(f"this server does not support {feature} (it announces {sorted(features)}); "
                          "upgrade the server")


def bulk_header(action: str, status: str, dry_run: bool, limit: int | None,
                filters: dict[str, Any]) -> dict[str, Any]:
    header: dict[str, Any] = {"action": action, "status": status, "dry_run": dry_run}
    unknown = set(filters) - set(_FILTER_KEYS)
    if unknown:
        raise TypeError(f"unknown filter {sorted(unknown)[0]!r} (filters: {', '.join(_FILTER_KEYS)})")
    header.update({k: v for k, v in filters.items() if v is not None})
    if limit is not None:
        header["limit"] = limit
    return header


def search_header(filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
    unknown = set(filters) - set(_SEARCH_KEYS)
    if unknown:
        raise TypeError(f"unknown search field {sorted(unknown)[0]!r} (fields: {', '.join(_SEARCH_KEYS)})")
    header = {k: v for k, v in filters.items() if v is not None}
    header["limit"] = limit
    if cursor is not None:
        header["cursor"] = cursor
    return header


class TriageMethods:
    """Mixed into ``Client`` (client/sync.py)."""

    if TYPE_CHECKING:
        server_info: dict[str, Any]

        def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                 timeout: float | None = None, lane: Any = None) -> Message: ...
        def _started(self) -> Any: ...

    def _insight(self, feature: str, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        self._started()
        _require(self.server_info, feature)
        return body(self.call(msg_type, header).header)

    def dlq_groups(self, type: str | None = None) -> dict[str, Any]:
        """Dead letters by type and normalised error: ``{"groups": [...], "total": n}``."""
        return self._insight("dlq_groups", MsgType.DLQ_GROUPS, {} if type is None else {"type": type})

    def delete(self, ids: list[str]) -> dict[str, Any]:
        """Delete finished tasks: ``{"deleted": n, "results": [...]}``."""
        return self._insight("delete", MsgType.DELETE, {"ids": list(ids)})

    def bulk(self, action: str, *, status: str = "dead_letter", dry_run: bool = False,
             limit: int | None = None, **filters: Any) -> dict[str, Any]:
        """Requeue or delete every task of ``status`` matching ``filters`` (type, group, error,
        since_ms, until_ms); with ``dry_run`` only count them."""
        return self._insight("bulk", MsgType.BULK, bulk_header(action, status, dry_run, limit, filters))

    def search(self, *, limit: int = 100, cursor: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page: ``{"tasks": [...], "cursor": str | None, "scanned": n}``."""
        return self._insight("search", MsgType.SEARCH, search_header(filters, limit, cursor))

    def search_all(self, *, page: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every match, page after page (each page bounded on the server)."""
        cursor: str | None = None
        while True:
            answer = self.search(limit=page, cursor=cursor, **filters)
            yield from answer["tasks"]
            cursor = answer["cursor"]
            if cursor is None:
                return

    def type_stats(self, type: str | None = None) -> list[dict[str, Any]]:
        """Per task type figures (depth, oldest pending, throughput, run/wait percentiles)."""
        answer = self._insight("type_stats", MsgType.TYPE_STATS, {} if type is None else {"type": type})
        return list(answer["types"])


class AsyncTriageMethods:
    """Mixed into ``AsyncClient`` (client/aio.py): the same methods, awaited."""

    if TYPE_CHECKING:
        server_info: dict[str, Any]

        async def call(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                       timeout: float | None = None, lane: Any = None) -> Message: ...
        async def _started(self) -> Any: ...

    async def _insight(self, feature: str, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        await self._started()
        _require(self.server_info, feature)
        return body((await self.call(msg_type, header)).header)

    async def dlq_groups(self, type: str | None = None) -> dict[str, Any]:
        return await self._insight("dlq_groups", MsgType.DLQ_GROUPS, {} if type is None else {"type": type})

    async def delete(self, ids: list[str]) -> dict[str, Any]:
        return await self._insight("delete", MsgType.DELETE, {"ids": list(ids)})

    async def bulk(self, action: str, *, status: str = "dead_letter", dry_run: bool = False,
                   limit: int | None = None, **filters: Any) -> dict[str, Any]:
        return await self._insight("bulk", MsgType.BULK, bulk_header(action, status, dry_run, limit, filters))

    async def search(self, *, limit: int = 100, cursor: str | None = None, **filters: Any) -> dict[str, Any]:
        return await self._insight("search", MsgType.SEARCH, search_header(filters, limit, cursor))

    async def search_all(self, *, page: int = 100, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            answer = await self.search(limit=page, cursor=cursor, **filters)
            for task in answer["tasks"]:
                yield task
            cursor = answer["cursor"]
            if cursor is None:
                return

    async def type_stats(self, type: str | None = None) -> list[dict[str, Any]]:
        answer = await self._insight("type_stats", MsgType.TYPE_STATS, {} if type is None else {"type": type})
        return list(answer["types"])
