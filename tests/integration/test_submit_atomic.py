"""A refused SUBMIT changes nothing, also when its batch spans shards (PROTOCOL.md, SUBMIT).

Every rule that can refuse a batch (an id twice, depth, a dependency unknown, on itself or in
a cycle, a size, a bad field) is tried with the offending task owned by the shard the
connection is on and by the other one, in a batch that also holds innocent tasks on both
shards and one without a client id. Ids are made for a given owner
(``int.from_bytes(id[0:4]) % shards``). After the NACK no task of the batch exists anywhere.
A client id that exists already is no refusal: the batch is idempotent for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from wire import hello, id_in_shard, list_tasks, nack, query, submit, uid

from shardq.client.connection import Connection
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

SHARDS = 2
MAX_PAYLOAD = 1024
DEPTH = 30

Case = Callable[[int, str], tuple[list[dict[str, Any]], str]]  # (offender's owner, type) -> tasks, code


def task(ttype: str, tid: str | None = None, **fields: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"type": ttype, "payload_len": 0, **fields}
    if tid is not None:
        t["id"] = tid
    return t


def duplicate(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a = id_in_shard(owner, SHARDS)
    return [task(ttype, a), task(ttype, a)], "BadRequest"


def on_itself(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a = id_in_shard(owner, SHARDS)
    return [task(ttype, a, depends_on=[a])], "BadRequest"


def cycle_across_shards(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a, b = id_in_shard(owner, SHARDS), id_in_shard(1 - owner, SHARDS)
    return [task(ttype, a, depends_on=[b]), task(ttype, b, depends_on=[a])], "BadRequest"


def cycle_on_one_shard(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a, b = id_in_shard(owner, SHARDS), id_in_shard(owner, SHARDS)
    return [task(ttype, a, depends_on=[b]), task(ttype, b, depends_on=[a])], "BadRequest"


def unknown_dependency_here(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a, ghost = id_in_shard(owner, SHARDS), id_in_shard(owner, SHARDS)
    return [task(ttype, a, depends_on=[ghost])], "NotFound"


def unknown_dependency_there(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    a, ghost = id_in_shard(owner, SHARDS), id_in_shard(1 - owner, SHARDS)
    return [task(ttype, a, depends_on=[ghost])], "NotFound"


def unknown_dependency_of_a_task_without_id(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    return [task(ttype, depends_on=[id_in_shard(owner, SHARDS)])], "NotFound"


def too_large(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    return [task(ttype, id_in_shard(owner, SHARDS), payload_len=MAX_PAYLOAD + 1)], "TooLarge"


def bad_field(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    return [task(ttype, id_in_shard(owner, SHARDS), priority=256)], "BadRequest"


def bad_dependency_id(owner: int, ttype: str) -> tuple[list[dict[str, Any]], str]:
    return [task(ttype, id_in_shard(owner, SHARDS), depends_on=["not-an-id"])], "BadRequest"


RULES: list[Case] = [duplicate, on_itself, cycle_across_shards, cycle_on_one_shard,
                     unknown_dependency_here, unknown_dependency_there,
                     unknown_dependency_of_a_task_without_id, too_large, bad_field, bad_dependency_id]


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    s = ServerProcess(str(tmp_path_factory.mktemp("atomic")), ["--shards", str(SHARDS)],
                      env={"SHARDQ_BROKER__MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD)}).start()
    yield s
    s.kill()


def on_shard(server: ServerProcess, shard: int) -> Connection:
    conn = server.connect(timeout=20)
    assert hello(conn, shard=shard)["shard"] == shard
    return conn


def nothing_stored(conn: Connection, ttype: str, ids: list[str], besides: tuple[str, ...] = ()) -> None:
    """None of ``ids``, and no task of ``ttype`` but ``besides``, exists on any shard."""
    assert query(conn, ids) == [None] * len(ids), "a task of the refused batch was stored"
    for status in ("pending", "dead_letter"):
        found = {t["id"] for t in list_tasks(conn, status, type=ttype)["tasks"]}
        assert found <= set(besides), f"a {status} task was stored"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("receiver", range(SHARDS), ids=lambda s: f"on{s}")
@pytest.mark.parametrize("owner", range(SHARDS), ids=lambda s: f"owner{s}")
def test_a_refused_batch_stores_nothing_on_any_shard(srv: ServerProcess, rule: Case, receiver: int,
                                                     owner: int) -> None:
    ttype = uid("atomic")
    bad, code = rule(owner, ttype)
    # Innocent tasks on each shard and one without a client id (stored with the receiver's
    # part), before and after the offending ones: each part would be stored on its own.
    innocent = [task(ttype, id_in_shard(s, SHARDS)) for s in range(SHARDS)] + [task(ttype)]
    tasks = [bad[0], *innocent, *bad[1:]]
    with on_shard(srv, receiver) as conn:
        payload = b"x" * sum(t["payload_len"] for t in tasks)
        err = nack(conn, MsgType.SUBMIT, {"tasks": tasks}, payload)
        assert err["code"] == code, err
        time.sleep(0.05)  # a part stored by mistake would be committed by now
        ids = sorted({t["id"] for t in tasks if "id" in t}
                     | {d for t in tasks for d in t.get("depends_on", []) if len(d) == 36})
        nothing_stored(conn, ttype, ids)
        # The same innocent tasks alone are accepted: the refusal was the offender's.
        assert len(submit(conn, *innocent)) == len(innocent)


@pytest.mark.parametrize("receiver", range(SHARDS), ids=lambda s: f"on{s}")
def test_existing_ids_make_a_batch_idempotent_not_refused(srv: ServerProcess, receiver: int) -> None:
    """Checked as a whole, the batch is judged as one shard would judge it: a task that exists is
    left as it is, whatever the batch says of it now (a cycle through it is no cycle)."""
    ttype = uid("idem")
    with on_shard(srv, receiver) as conn:
        x = [id_in_shard(s, SHARDS) for s in range(SHARDS)]
        assert submit(conn, *(task(ttype, tid) for tid in x)) == x
        y = [id_in_shard(1 - s, SHARDS) for s in range(SHARDS)]  # y[i] on the other shard from x[i]
        # x[i] (exists) "depends on" y[i], y[i] depends on x[i]: no cycle, x[i] is not new.
        batch = [task(ttype, x[i], depends_on=[y[i]]) for i in range(SHARDS)]
        batch += [task(ttype, y[i], depends_on=[x[i]]) for i in range(SHARDS)]
        assert submit(conn, *batch) == x + y
        got = query(conn, x + y)
        assert [t["depends_on"] if t else None for t in got] == [[]] * SHARDS + [[x[i]] for i in range(SHARDS)]


def test_depth_is_checked_for_the_whole_batch_without_the_existing_ids(server_factory) -> None:
    srv = server_factory("--shards", str(SHARDS), "--queue-depth-threshold", str(DEPTH))
    ttype = uid("depth")
    with on_shard(srv, 0) as conn:
        existing = [id_in_shard(s, SHARDS) for s in range(SHARDS)]
        submit(conn, *(task(ttype, tid) for tid in existing))
        time.sleep(0.5)  # each shard hears the other's depth (reports every 0.1 s)
        # DEPTH - 2 new tasks spread over the shards, plus the existing ones: exactly full.
        fresh = [id_in_shard(i % SHARDS, SHARDS) for i in range(DEPTH - len(existing))]
        over = [*fresh, id_in_shard(1, SHARDS)]
        err = nack(conn, MsgType.SUBMIT, {"tasks": [task(ttype, tid) for tid in [*existing, *over]]})
        assert err["code"] == "QueueFull", err
        time.sleep(0.05)
        nothing_stored(conn, ttype, over, besides=tuple(existing))
        assert submit(conn, *(task(ttype, tid) for tid in [*existing, *fresh])) == [*existing, *fresh]
