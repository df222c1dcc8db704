"""Links between shardq's own processes: shard <-> shard and shard <-> coordinator.

Rules:
1. Same codec as the client port (frames.py), over Unix sockets in the run dir
   the supervisor made. A request carries a rid and gets an ACK or a NACK; a
   one-way message (REPORT, STATE, WORKER_DEAD) carries rid null.
2. A request to a process that is down, or whose link breaks before it
   answered, fails with ``Unavailable``: the owner may be restarting, and the
   client retries. Nothing here retries by itself.
3. The run dir's socket names are the only addresses: ``mesh-<i>.sock`` (shard
   i's forwarded requests), ``handoff-<i>.sock`` (connections handed to shard i,
   handoff.py), ``coordinator.sock``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from shardq.errors import Unavailable, error_from_wire
from shardq.protocol.frames import (
    INTERNAL_TYPES,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    FrameDecoder,
    Malformed,
    Message,
    MsgType,
    encode,
)

log = logging.getLogger("shardq.mesh")

# A peer that does not answer in this long is treated as down for that request.
REQUEST_TIMEOUT_S = 30.0
ALL_TYPES = REQUEST_TYPES | RESPONSE_TYPES | INTERNAL_TYPES

Reply = tuple[dict[str, Any], bytes]


def mesh_path(run_dir: str, shard: int) -> str:
    return os.path.join(run_dir, f"mesh-{shard}.sock")


def handoff_path(run_dir: str, shard: int) -> str:
    return os.path.join(run_dir, f"handoff-{shard}.sock")


def coordinator_path(run_dir: str) -> str:
    return os.path.join(run_dir, "coordinator.sock")


class Link(asyncio.Protocol):
    """One side of an internal connection: pipelined requests, one-way messages,
    and whatever the other side sends (handed to ``on_message``)."""

    def __init__(self, name: str, on_message: Callable[[Link, Message], None] | None = None,
                 on_lost: Callable[[Link], None] | None = None) -> None:
        self.name = name
        self.on_message = on_message
        self.on_lost = on_lost
        self.decoder = FrameDecoder(accept=ALL_TYPES)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.closed = False
        self._rid = 0

    # -- transport events --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"{self.name} went away before answering"))
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            while (msg := self.decoder.next()) is not None:
                if type(msg) is Malformed:
                    log.error("%s sent a malformed frame: %s", self.name, msg.error)
                    continue
                if msg.type in RESPONSE_TYPES:
                    fut = self.pending.pop(msg.rid, None) if msg.rid is not None else None
                    if fut is None or fut.done():
                        continue
                    if msg.type is MsgType.ACK:
                        fut.set_result((msg.header, msg.blob))
                    else:
                        fut.set_exception(error_from_wire(msg.header.get("error") or {}))
                elif self.on_message is not None:
                    self.on_message(self, msg)
        except Exception:
            # Internal peers speak our own codec; a violation means a bug: drop the link.
            log.exception("link %s: bad stream, closing it", self.name)
            self.close()

    # -- sending ---------------------------------------------------------------------

    def request(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"") -> asyncio.Future[Reply]:
        """Send a request; the future gets (ACK header, blob) or the NACK's error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            fut.set_exception(Unavailable(f"{self.name} is not connected"))
            return fut
        self._rid += 1
        rid = self._rid
        self.pending[rid] = fut
        self.transport.write(encode(msg_type, {**header, "rid": rid}, blob))
        return fut

    def send(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"") -> bool:
        """A one-way message; False when the link is down (the caller's next report repairs)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(encode(msg_type, {**header, "rid": None}, blob))
        return True

    def answer(self, rid: int | None, header: dict[str, Any], blob: bytes = b"") -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(MsgType.ACK, {**header, "rid": rid}, blob))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def open_link(path: str, name: str, on_message: Callable[[Link, Message], None] | None = None,
                    on_lost: Callable[[Link], None] | None = None) -> Link:
    """Connect to an internal Unix socket; Unavailable when nobody listens there."""
    loop = asyncio.get_running_loop()
    try:
        _, link = await loop.create_unix_connection(lambda: Link(name, on_message, on_lost), path)
    except OSError as exc:
        raise Unavailable(f"{name} is unavailable (restarting?): {exc.strerror or exc}") from None
    return link


class Peers:
    """This shard's links to the other shards' mesh sockets, opened on first use."""

    def __init__(self, run_dir: str, shard: int, shards: int) -> None:
        self.run_dir = run_dir
        self.shard = shard
        self.shards = shards
        self._links: dict[int, Link] = {}
        self._connecting: dict[int, asyncio.Future[Link]] = {}
        self.forwarded = 0  # requests sent to another shard (a metric and a benchmark figure)

    def others(self) -> list[int]:
        return [i for i in range(self.shards) if i != self.shard]

    async def link(self, shard: int) -> Link:
        link = self._links.get(shard)
        if link is not None and not link.closed:
            return link
        pending = self._connecting.get(shard)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._connecting[shard] = fut
        try:
            link = await open_link(mesh_path(self.run_dir, shard), f"shard-{shard}",
                                   on_lost=lambda lk, i=shard: self._lost(i, lk))
        except Unavailable as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: other awaiters get it from shield
            raise
        finally:
            self._connecting.pop(shard, None)
        self._links[shard] = link
        fut.set_result(link)
        return link

    def _lost(self, shard: int, link: Link) -> None:
        if self._links.get(shard) is link:
            del self._links[shard]

    async def request(self, shard: int, msg_type: MsgType, header: dict[str, Any],
                      blob: bytes = b"") -> Reply:
        """Forward one request to ``shard`` and wait for its answer."""
        link = await self.link(shard)
        self.forwarded += 1
        try:
            return await asyncio.wait_for(link.request(msg_type, header, blob), REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(f"shard {shard} did not answer within {REQUEST_TIMEOUT_S:.0f} s") from None

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
