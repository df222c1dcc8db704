"""Which of a spreading client's connections a request takes: one rule for the blocking
``Client`` and the asyncio ``AsyncClient``.

A client's first connection (the *home* lane) lands wherever the acceptor puts it; its HELLO says
how many shards there are and which one it is on, and from then on (``Spread``, spread.py) every
other shard gets a lane of its own, made on first use. Under TLS a new lane's context offers its
shard as an ALPN name (shardq/tls.py), so it lands on that shard too.

``LaneRouting`` is a mixin: each client keeps its lanes as attributes (``_home``, ``_lanes``,
``_spread``) because its requests read them on every call, and supplies ``_new_lane``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from shardq.client.spread import Spread
from shardq.tls import client_context


class Lane(Protocol):
    info: dict[str, Any]  # HELLO's answer on this lane: ``shard`` says where it really is


L = TypeVar("L", bound=Lane)


class LaneRouting(Generic[L]):
    spreading: bool
    _home: L
    _lanes: dict[int, L]
    _spread: Spread | None
    _user_context: ssl.SSLContext | None
    _tls: tuple[str | None, str | None, str | None] | None

    @property
    def server_info(self) -> dict[str, Any]:
        """HELLO's answer on the home connection."""
        return self._home.info

    def _new_lane(self, shard: int, ssl_context: ssl.SSLContext | None) -> L:
        raise NotImplementedError

    def _learned(self, lane: L) -> None:
        """After a HELLO on ``lane``: the home lane's answer starts the spreading."""
        if lane is self._home and self.spreading and self._spread is None:
            shards, home = lane.info.get("shards"), lane.info.get("shard")
            if type(shards) is int and shards > 1 and type(home) is int:
                self._spread = Spread(home, shards)

    def _lane(self, shard: int) -> L:
        """The connection for ``shard`` (the home one when that is where it is)."""
        if self._spread is None or shard == self._home.info.get("shard"):
            return self._home
        lane = self._lanes.get(shard)
        if lane is None:
            ctx = self._user_context
            if self._tls is not None:
                ctx = client_context(*self._tls, shard)  # the ALPN offer names the shard
            lane = self._lanes[shard] = self._new_lane(shard, ctx)
        return lane

    def _by_ids(self, ids: Iterable[Any]) -> L:
        return self._home if self._spread is None else self._lane(self._spread.ids_shard(ids))
