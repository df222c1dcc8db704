"""The quiet/stop order table (server/worker_control.py) and the client's view of a HEARTBEAT
answer (client/control.py), without sockets."""

from __future__ import annotations

import pytest

from shardq.client.control import NotSupported, parse_beat, require_feature, worker_control_header
from shardq.errors import BadRequest
from shardq.protocol import requests as rq
from shardq.protocol.frames import Message, MsgType
from shardq.server.worker_control import ShardOrders, merge_reported, on_order, stronger

WORKERS = {"w1": {"worker_id": "w1", "state": "running"}, "w2": {"worker_id": "w2", "state": "quiet"}}


def test_an_order_is_for_a_known_worker_only() -> None:
    orders: dict[str, str] = {}
    assert on_order(orders, WORKERS, {"worker_id": "nobody", "action": "quiet"}) == ({"found": False}, False)
    assert orders == {}
    answer, changed = on_order(orders, WORKERS, {"worker_id": "w1", "action": "quiet"})
    assert answer == {"found": True, "command": "quiet", "state": "running"} and changed
    assert on_order(orders, WORKERS, {"worker_id": "w1", "action": "quiet"})[1] is False  # no news


def test_stop_is_stronger_than_quiet() -> None:
    orders: dict[str, str] = {}
    on_order(orders, WORKERS, {"worker_id": "w1", "action": "stop"})
    answer, changed = on_order(orders, WORKERS, {"worker_id": "w1", "action": "quiet"})
    assert answer["command"] == "stop" and not changed
    assert stronger("quiet", "stop") == "stop" and stronger(None, "quiet") == "quiet"


def test_a_restarted_coordinator_takes_the_orders_back_from_a_shard() -> None:
    orders: dict[str, str] = {}
    # Orders for workers the registry does not know (any more) and bad values are not taken.
    changed = merge_reported(orders, {"w1": "quiet", "w2": "stop", "gone": "quiet", "w3": "dance"}, WORKERS)
    assert changed and orders == {"w1": "quiet", "w2": "stop"}
    assert merge_reported(orders, {"w1": "quiet"}, WORKERS) is False
    assert merge_reported(orders, "not a table", WORKERS) is False


def test_a_shard_keeps_the_table_it_was_sent() -> None:
    shard = ShardOrders()
    assert shard.command_for("w1") is None
    shard.replace({"w1": "quiet", "w2": "bogus", 3: "stop"})
    assert shard.orders == {"w1": "quiet"}
    shard.replace({})
    assert shard.command_for("w1") is None


def test_worker_control_request_is_checked() -> None:
    assert rq.parse_worker_control({"worker_id": "w1", "action": "stop"}) == ("w1", "stop")
    with pytest.raises(BadRequest, match="^action: must be quiet or stop"):
        rq.parse_worker_control({"worker_id": "w1", "action": "pause"})
    with pytest.raises(BadRequest, match="^worker_id"):
        rq.parse_worker_control({"action": "quiet"})
    with pytest.raises(ValueError):
        worker_control_header("w1", "pause")


def test_heartbeat_states_of_the_extension_are_accepted() -> None:
    for state in ("running", "draining", "quiet", "stopping"):
        assert rq.parse_heartbeat({"worker_id": "w", "state": state})[1]["state"] == state
    with pytest.raises(BadRequest, match="^state:"):
        rq.parse_heartbeat({"worker_id": "w", "state": "asleep"})


def test_the_client_reads_every_part_of_a_heartbeat_answer() -> None:
    beat = parse_beat(Message(MsgType.ACK, {"rid": 1, "lease_expires_ms": 5, "lost": ["a", "b"],
                                            "cancelled": ["a"], "command": "quiet"}))
    assert (beat.lease_expires_ms, beat.lost, beat.cancelled, beat.command) == (5, ["a", "b"], ["a"], "quiet")
    old = parse_beat(Message(MsgType.ACK, {"rid": 1, "lease_expires_ms": 5}))  # an older server
    assert (old.lost, old.cancelled, old.command) == ([], [], None)


def test_an_older_server_is_refused_before_anything_is_sent() -> None:
    require_feature({"features": ["worker_control"]}, "worker_control")
    with pytest.raises(NotSupported, match="does not support the 'worker_control' extension"):
        require_feature({"server": "shardq/0.1.0"}, "worker_control")
