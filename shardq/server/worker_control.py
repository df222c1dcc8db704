"""Telling a worker what to do: the HEARTBEAT answer's notices, and quiet/stop orders.

Rules (docs/protocol.md, "Cancelling a running task" and "Quiet and stop a worker"):
1. A worker hears from the broker only in HEARTBEAT answers (``Beat``): ``lost`` (leases it no
   longer holds), ``cancelled`` (the part of them revoked by CANCEL: stop those handlers) and
   ``command`` (``quiet`` or ``stop``). No frame is ever pushed to a connection, so a client that
   predates these fields sees only keys it may ignore.
2. The coordinator keeps the orders (a worker id -> ``quiet`` | ``stop``) and sends the whole
   table to every shard (WORKER_ORDERS) whenever it changes and when a shard (re)connects; a
   shard sends it back in its full REPORT, so a restarted coordinator has it again. Every shard
   holds it, so the order reaches the worker on whichever shard its heartbeat connection lands.
   Orders are not written to disk: they last while any broker process keeps them; the worker
   itself stays quiet once told (its state, reported in every HEARTBEAT, is what ``shardq
   workers`` shows).
3. An order is for a worker the registry knows (NotFound otherwise); it is dropped when the
   worker deregisters or is declared dead. ``stop`` is stronger than ``quiet``: a later
   ``quiet`` does not undo a ``stop``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from shardq.errors import NotFound, Unavailable
from shardq.protocol.frames import MsgType

if TYPE_CHECKING:
    from shardq.engine.engine import Engine
    from shardq.server.mesh import Link
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.workers")

ACTIONS = ("quiet", "stop")
STRENGTH = {"quiet": 1, "stop": 2}
# The worker's own states as it reports them in HEARTBEAT's `state`.
STATES = ("running", "quiet", "stopping", "draining")


class Beat(NamedTuple):
    """A HEARTBEAT answer (rule 1)."""

    expires: int
    lost: list[str]
    cancelled: list[str]
    command: str | None = None


def local_beat(engine: Engine, worker_id: str, info: dict[str, Any], active: list[bytes] | None,
               now: int, command: str | None = None) -> Beat:
    expires, lost = engine.heartbeat(worker_id, info, active, now)
    return Beat(expires, lost, engine.cancel_notices(worker_id, active), command)


def stronger(old: str | None, new: str) -> str:
    return new if old is None or STRENGTH[new] >= STRENGTH[old] else old


class ShardOrders:
    """A shard's copy of the coordinator's order table (rule 2)."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}

    def command_for(self, worker_id: str) -> str | None:
        return self.orders.get(worker_id) if self.orders else None

    def replace(self, table: object) -> None:
        if isinstance(table, dict):
            self.orders = {k: v for k, v in table.items() if type(k) is str and v in ACTIONS}


async def control(shard: ShardServer, worker_id: str, action: str) -> dict[str, Any]:
    """Record ``action`` for ``worker_id`` at the coordinator, which tells every shard."""
    link = shard.coordinator
    if link is None:
        if shard.run_dir is not None:
            raise Unavailable("the coordinator is restarting; try again")
        return _control_here(shard, worker_id, action)  # one shard in one process (tests)
    shard.flush_report()  # a worker heard just now is in the registry first
    answer, _ = await link.request(MsgType.WORKER_ORDER, {"worker_id": worker_id, "action": action})
    if not answer.get("found"):
        raise NotFound(f"no worker {worker_id!r} (shardq workers lists the live ones)")
    return {"worker_id": worker_id, "command": answer["command"], "state": answer.get("state") or "running"}


def _control_here(shard: ShardServer, worker_id: str, action: str) -> dict[str, Any]:
    known = {w.worker_id: w for w in shard.engine.workers()}
    if worker_id not in known:
        raise NotFound(f"no worker {worker_id!r} (shardq workers lists the live ones)")
    orders = shard.orders.orders
    orders[worker_id] = stronger(orders.get(worker_id), action)
    return {"worker_id": worker_id, "command": orders[worker_id], "state": known[worker_id].state}


# -- the coordinator's side (coordinator.py calls these) ----------------------------------------

def on_order(orders: dict[str, str], workers: dict[str, dict[str, Any]], header: dict[str, Any]
             ) -> tuple[dict[str, Any], bool]:
    """A shard's WORKER_ORDER: the answer, and whether the table changed."""
    wid, action = header.get("worker_id"), header.get("action")
    w = workers.get(wid) if type(wid) is str else None
    if w is None or action not in ACTIONS:
        return {"found": False}, False
    assert isinstance(wid, str)
    new = stronger(orders.get(wid), action)
    changed = orders.get(wid) != new
    orders[wid] = new
    if changed:
        log.info("worker %s: %s ordered (delivered with its next heartbeat)", wid, new)
    return {"found": True, "command": new, "state": w.get("state")}, changed


def merge_reported(orders: dict[str, str], reported: object, workers: dict[str, dict[str, Any]]) -> bool:
    """A shard's full REPORT carries its copy of the table: a restarted coordinator takes it back."""
    changed = False
    if isinstance(reported, dict):
        for wid, action in reported.items():
            if type(wid) is str and action in ACTIONS and wid in workers:
                new = stronger(orders.get(wid), action)
                if orders.get(wid) != new:
                    orders[wid] = new
                    changed = True
    return changed


def push_orders(orders: dict[str, str], links: list[Link]) -> None:
    for link in links:
        link.send(MsgType.WORKER_ORDERS, {"orders": orders})


__all__ = ["ACTIONS", "STATES", "Beat", "ShardOrders", "control", "local_beat", "on_order",
           "merge_reported", "push_orders"]
