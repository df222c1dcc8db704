"""Fixtures: real `shardq serve` processes (factory fixtures own what they start)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shardq.testing import ServerProcess


@pytest.fixture
def server_factory(tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(*args: str, data_dir: str | None = None, env: dict[str, str] | None = None,
             start: bool = True) -> ServerProcess:
        d = data_dir or str(tmp_path / f"data{len(started)}")
        srv = ServerProcess(d, args, env=env)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def server(server_factory) -> ServerProcess:
    """One shard, short leases so lease tests run in seconds."""
    return server_factory("--shards", "1")
