"""Which shard's connection a request of a bundled client goes to: pure, no I/O.

A task lives on its owner, ``int.from_bytes(id[0:4]) % shards`` (shardq.task.owner_of); a request
sent to another shard's connection costs a hop over the shard mesh, and a client that sends all
its SUBMITs down the one connection the acceptor gave it puts all its work on one core. So a
*spreading* client (``shardq.Client`` and ``shardq.AsyncClient`` by default) keeps one connection
per shard, each opened on first use once HELLO has said ``shards``, and:

1. SUBMIT: each call goes to the next shard in turn (round-robin per call, starting at the home
   shard, so a client that submits once opens one connection); its ids are made in that
   connection's partition (HELLO's ``shard``), so no SUBMIT crosses shards. A batch that names a
   client id goes to that id's owner (a batch is all or nothing: it is never split).
2. CLAIM: each call goes to the next shard in turn, so claims take local work first everywhere.
3. By-id requests (QUERY_STATUS, CANCEL, REQUEUE by ids, and so ``wait``) go to the owner of the
   ids; ids of several owners go to the owner of most of them (the server forwards the rest, one
   hop; a RESULT is split by owner instead, since its answer is per item anyway).
4. Everything else (HELLO, PING, GET_STATS, LIST_TASKS, HEARTBEAT, REGISTER/DEREGISTER_WORKER) uses
   the home connection, the one the acceptor placed: the server fans those out itself.

``Client(url, shard=k)`` pins every request to shard k and ``spread=False`` keeps the one
connection the acceptor gives: neither spreads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shardq.client.models import Job


def owner(task_id: Any, shards: int) -> int | None:
    """The shard owning ``task_id`` (a UUID string), or None when it is not one (the server will
    say BadRequest; any connection can carry that)."""
    if shards <= 1:
        return 0
    if not isinstance(task_id, str) or len(task_id) < 8:
        return None
    try:
        return int(task_id[:8], 16) % shards
    except ValueError:
        return None


class Spread:
    """The choice of shard for each request of one spreading client (module rules)."""

    __slots__ = ("home", "shards", "_submit", "_claim")

    def __init__(self, home: int, shards: int) -> None:
        self.home = home        # the shard the acceptor placed the first connection on
        self.shards = shards
        self._submit = home     # the next shard in turn, for SUBMIT (rule 1)
        self._claim = home      # and for CLAIM (rule 2)

    def submit_shard(self, jobs: Sequence[Job]) -> int:
        """Rule 1."""
        for job in jobs:
            if job.id is not None:
                k = owner(job.id, self.shards)
                if k is not None:
                    return k
        k = self._submit
        self._submit = (k + 1) % self.shards
        return k

    def claim_shard(self) -> int:
        """Rule 2."""
        k = self._claim
        self._claim = (k + 1) % self.shards
        return k

    def ids_shard(self, ids: Iterable[Any]) -> int:
        """Rule 3: the owner of most of ``ids`` (the first such owner on a tie; home if none)."""
        counts: dict[int, int] = {}
        for task_id in ids:
            k = owner(task_id, self.shards)
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        if not counts:
            return self.home
        return max(counts, key=counts.__getitem__)  # dicts keep order: the first wins a tie

    def split(self, ids: Sequence[Any]) -> dict[int, list[int]]:
        """Positions of ``ids`` by owner (a RESULT's items): ``{shard: [index, ...]}``, in order;
        an id that is not one goes with the home shard's."""
        parts: dict[int, list[int]] = {}
        for i, task_id in enumerate(ids):
            k = owner(task_id, self.shards)
            parts.setdefault(self.home if k is None else k, []).append(i)
        return parts


__all__ = ["Spread", "owner"]
