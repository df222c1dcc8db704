"""The permission matrix of scoped API keys against a real 2-shard server.

For every message, each permission is tried with a pattern that matches the task type ("ok.>")
and one that does not ("other.>"), on tasks owned by both shards: the right answers, Forbidden
for a missing permission, and for a type outside the key's patterns the same answer as for a task
that does not exist (NotFound, null, an empty page), so nothing about other types leaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from wire import (
    claim,
    deregister,
    heartbeat,
    hello,
    id_in_shard,
    list_tasks,
    nack,
    query,
    register,
    stats,
    submit,
    uid,
)

from shardq import keys as K
from shardq.client.connection import Connection
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

PERMS = ("submit", "claim", "read", "admin")
MATCH, MISS = "ok.>", "other.>"
TYPE = "ok.job"


def make_keys(path: Path) -> dict[tuple[str, str], str]:
    """A key for each (permission, pattern), plus ("admin", "all"); their secrets."""
    records, out = [], {}
    for perm in PERMS:
        for pat in (MATCH, MISS):
            kid, secret = K.new_secret()
            records.append(K.KeyRecord(kid, f"{perm}-{pat}", K.hash_secret(secret),
                                       K.make_scopes([perm], [pat])))
            out[(perm, pat)] = secret
    kid, secret = K.new_secret()
    records.append(K.KeyRecord(kid, "root", K.hash_secret(secret), K.make_scopes(["admin"], None)))
    out[("admin", "all")] = secret
    K.write_keys(str(path), records)
    return out


@pytest.fixture(scope="module")
def scoped(tmp_path_factory) -> tuple[ServerProcess, dict[tuple[str, str], str]]:
    d = tmp_path_factory.mktemp("scopes")
    secrets = make_keys(d / "keys.yaml")
    s = ServerProcess(str(d / "data"), ["--shards", "2"],
                      env={"SHARDQ_AUTH__ENABLED": "true", "SHARDQ_AUTH__KEYS_FILE": str(d / "keys.yaml")}).start()
    yield s, secrets
    s.kill()


def conn_as(srv: ServerProcess, secret: str) -> Connection:
    c = srv.connect(timeout=10)
    hello(c, api_key=secret)
    return c


def two_tasks(root: Connection, **fields: Any) -> list[str]:
    """Tasks of TYPE, one owned by each shard."""
    return submit(root, *({"type": TYPE, "id": id_in_shard(i, 2), **fields} for i in range(2)))


@pytest.mark.parametrize("perm", PERMS)
def test_submit(scoped, perm: str) -> None:
    srv, secrets = scoped
    for pat in (MATCH, MISS):
        with conn_as(srv, secrets[(perm, pat)]) as c:
            task = {"type": TYPE, "id": id_in_shard(1, 2)}
            if perm in ("submit", "admin") and pat == MATCH:
                assert len(submit(c, task, {"type": "ok.a.b"})) == 2
            else:
                err = nack(c, MsgType.SUBMIT, {"tasks": [{**task, "payload_len": 0}]})
                assert err["code"] == "Forbidden", err
                if perm in ("submit", "admin"):
                    assert "'ok.job'" in err["message"]
    with conn_as(srv, secrets[("admin", "all")]) as root:  # nothing of a refused batch was stored
        assert query(root, [task["id"]])[0] is None  # the last try was refused


@pytest.mark.parametrize("perm", PERMS)
def test_query_and_list(scoped, perm: str) -> None:
    srv, secrets = scoped
    with conn_as(srv, secrets[("admin", "all")]) as root:
        ids = two_tasks(root, priority=7)
    for pat in (MATCH, MISS):
        with conn_as(srv, secrets[(perm, pat)]) as c:
            if perm not in ("read", "admin"):
                assert nack(c, MsgType.QUERY_STATUS, {"ids": ids})["code"] == "Forbidden"
                assert nack(c, MsgType.LIST_TASKS, {"status": "pending"})["code"] == "Forbidden"
                assert nack(c, MsgType.GET_STATS, {})["code"] == "Forbidden"
                continue
            got = query(c, ids)
            listed = {t["id"] for t in list_tasks(c, "pending", limit=1000, min_priority=7,
                                                  max_priority=7)["tasks"]}
            typed = list_tasks(c, "pending", type=TYPE, limit=1000)["tasks"]
            assert stats(c)["totals"]["pending"] >= 2  # counts only: any pattern may read them
            if pat == MATCH:
                assert [t["id"] for t in got] == ids  # both shards' tasks
                assert set(ids) <= listed and set(ids) <= {t["id"] for t in typed}
            else:
                assert got == [None, None]
                assert not set(ids) & listed and typed == []


@pytest.mark.parametrize("perm", PERMS)
def test_cancel_and_requeue(scoped, perm: str) -> None:
    srv, secrets = scoped
    with conn_as(srv, secrets[("admin", "all")]) as root:
        ids = two_tasks(root)
    for pat in (MISS, MATCH):
        with conn_as(srv, secrets[(perm, pat)]) as c:
            if perm != "admin":
                assert nack(c, MsgType.CANCEL, {"id": ids[0]})["code"] == "Forbidden"
                assert nack(c, MsgType.REQUEUE, {"ids": ids})["code"] == "Forbidden"
                continue
            answer = c.call(MsgType.REQUEUE, {"ids": ids}).header
            codes = [r["error"]["code"] for r in answer["results"]]
            for tid in ids:  # on either shard
                if pat == MISS:
                    assert nack(c, MsgType.CANCEL, {"id": tid})["code"] == "NotFound"
                else:
                    assert c.call(MsgType.CANCEL, {"id": tid}).header["status"] == "cancelled"
            # Pending tasks cannot be requeued: InvalidState where the key sees them.
            assert codes == (["NotFound"] * 2 if pat == MISS else ["InvalidState"] * 2), answer


def test_requeue_all_and_list_filter_to_allowed_types(scoped) -> None:
    srv, secrets = scoped
    wid = uid("w")
    mine, other = f"ok.{uid('r')}", uid("other")  # other: a type no "ok.>" key may touch
    with conn_as(srv, secrets[("admin", "all")]) as root:
        ids = submit(root, *({"type": t, "id": id_in_shard(i, 2), "max_retries": 0}
                             for t in (mine, other) for i in range(2)))
        got = []
        for _ in range(50):
            got += claim(root, wid, max=10, types=[mine, other])
            if len(got) >= 4:
                break
        for task, _ in got:
            assert root.call(MsgType.RESULT, {"worker_id": wid, "results": [
                {"id": task["id"], "attempt": task["attempt"], "status": "failed", "error": "x",
                 "retry": False}]}).header["results"][0]["status"] == "dead_letter"
        with conn_as(srv, secrets[("admin", MISS)]) as miss:
            assert miss.call(MsgType.REQUEUE, {"status": "dead_letter"}).header["requeued"] == 0
            assert miss.call(MsgType.REQUEUE, {"status": "dead_letter", "type": mine}).header["requeued"] == 0
        assert [t["status"] for t in query(root, ids)] == ["dead_letter"] * 4
        with conn_as(srv, secrets[("admin", MATCH)]) as match:
            dl = {t["id"] for t in list_tasks(match, "dead_letter", limit=1000)["tasks"]}
            assert set(ids[:2]) <= dl and not set(ids[2:]) & dl
            assert match.call(MsgType.REQUEUE, {"status": "dead_letter"}).header["requeued"] >= 2
        assert [t["status"] for t in query(root, ids)] == ["pending", "pending", "dead_letter", "dead_letter"]
        assert root.call(MsgType.REQUEUE, {"ids": ids[2:]}).header["requeued"] == 2


@pytest.mark.parametrize("perm", PERMS)
def test_claim_result_heartbeat(scoped, perm: str) -> None:
    srv, secrets = scoped
    typ = f"ok.{uid('c')}"
    with conn_as(srv, secrets[("admin", "all")]) as root:
        ids = submit(root, *({"type": typ, "id": id_in_shard(i, 2)} for i in range(2)))
    for pat in (MISS, MATCH):
        with conn_as(srv, secrets[(perm, pat)]) as c:
            wid = uid("w")
            if perm not in ("claim", "admin"):
                for mtype, header in ((MsgType.CLAIM, {"worker_id": wid}),
                                      (MsgType.HEARTBEAT, {"worker_id": wid}),
                                      (MsgType.REGISTER_WORKER, {"worker_id": wid}),
                                      (MsgType.DEREGISTER_WORKER, {"worker_id": wid})):
                    assert nack(c, mtype, header)["code"] == "Forbidden"
                continue
            register(c, wid)
            heartbeat(c, wid)
            if pat == MISS:
                assert claim(c, wid, max=10) == []  # ready tasks of ok.* are there, not for it
                err = nack(c, MsgType.CLAIM, {"worker_id": wid, "types": [typ]})
                assert err["code"] == "Forbidden" and typ in err["message"]
                deregister(c, wid)
                continue
            got = []
            for _ in range(50):  # the other shard's task comes by a cross-shard claim
                got += claim(c, wid, max=10, types=[typ])
                if len(got) == 2:
                    break
            assert sorted(t["id"] for t, _ in got) == sorted(ids)
            with conn_as(srv, secrets[(perm, MISS)]) as thief:  # RESULT for a type it may not claim
                items = [{"id": t["id"], "attempt": t["attempt"], "status": "completed", "result_len": 0}
                         for t, _ in got]
                answers = thief.call(MsgType.RESULT, {"worker_id": wid, "results": items}).header["results"]
                assert [a["error"]["code"] for a in answers] == ["NotFound", "NotFound"]
            answers = c.call(MsgType.RESULT, {"worker_id": wid, "results": items}).header["results"]
            assert [a["status"] for a in answers] == ["completed", "completed"]
            deregister(c, wid)


def test_claim_without_types_takes_only_allowed_types_across_shards(scoped) -> None:
    srv, secrets = scoped
    with conn_as(srv, secrets[("admin", "all")]) as root:
        theirs = submit(root, *({"type": uid("zz"), "id": id_in_shard(i, 2), "priority": 255}
                                for i in range(2)))
        mine = submit(root, *({"type": f"ok.{uid('n')}", "id": id_in_shard(i, 2)} for i in range(2)))
        with conn_as(srv, secrets[("claim", MATCH)]) as c:
            wid = uid("w")
            seen: set[str] = set()
            for _ in range(60):
                got = claim(c, wid, max=10)
                seen |= {t["id"] for t, _ in got}
                assert all(t["type"].startswith("ok.") for t, _ in got), got
                if set(mine) <= seen:
                    break
            assert set(mine) <= seen and not set(theirs) & seen
        assert [t["status"] for t in query(root, theirs)] == ["pending", "pending"]
        for tid in theirs:
            root.call(MsgType.CANCEL, {"id": tid})
