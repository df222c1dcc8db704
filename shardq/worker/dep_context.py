"""What a handler reads of its task's dependencies: ``ctx.dependency_results()``.

Rules:
1. A handler registered with ``@app.task(..., dependency_results=True)`` makes the worker's
   CLAIMs ask for them: the answer carries each dependency's result within the broker's caps
   (docs/protocol.md, "Dependency results"), so most handlers need no request of their own.
2. What the claim did not carry (too large for the caps, an owner shard restarting, or a handler
   that did not ask) is fetched when the handler asks for it, with one QUERY_STATUS
   ``with_result`` for all of them, on a short-lived connection of its own (the worker's
   connection belongs to its event loop; a handler runs in a thread or a child process). That
   call blocks: an async handler that may need it runs it with ``asyncio.to_thread``.
3. Everything here pickles, so that a process-pool child gets it with the task.
"""

from __future__ import annotations

from typing import Any

import orjson

from shardq.client.sync import Client


class DependencyResults:
    """The dependencies of one claimed task, their results carried by the claim, and how to
    fetch the rest (the worker's url, API key and TLS files)."""

    __slots__ = ("depends_on", "carried", "connect")

    def __init__(self, depends_on: list[str], carried: dict[str, bytes],
                 connect: tuple[str, str | None, str | None, str | None, str | None]) -> None:
        self.depends_on = depends_on
        self.carried = carried
        self.connect = connect

    def results(self, decode: bool) -> dict[str, Any]:
        missing = [d for d in self.depends_on if d not in self.carried]
        if missing:
            self.carried.update(self._fetch(missing))
        out: dict[str, Any] = {}
        for dep in self.depends_on:
            data = self.carried.get(dep)
            out[dep] = _decode(data) if decode and data is not None else data
        return out

    def _fetch(self, ids: list[str]) -> dict[str, bytes]:
        url, api_key, tls_ca, tls_cert, tls_key = self.connect
        with Client(url, api_key=api_key, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                    spread=False) as client:
            infos = client.status_many(ids, with_result=True)
        return {dep: info.result for dep, info in zip(ids, infos)
                if info is not None and info.result is not None}


def _decode(data: bytes) -> Any:
    """JSON when it is JSON (what ``ctx`` results usually are), else the bytes as they are."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
