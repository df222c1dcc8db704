"""Schedules and API keys against a real 2-shard server with auth on: changing a schedule needs
``admin``, reading needs ``read``; a key scoped to some task types sees and changes only the
schedules of those types, also when the schedule lives on the other shard (the owner applies the
scope the receiving shard forwards)."""

from __future__ import annotations

from typing import Any

import pytest

from shardq import keys as K
from shardq.client.sync import Client
from shardq.engine.schedules import schedule_owner
from shardq.errors import Forbidden, NotFound
from shardq.testing import ServerProcess

SHARDS = 2


def name_on(shard: int, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(100) if schedule_owner(f"{prefix}-{i}", SHARDS) == shard)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Any:
    d = tmp_path_factory.mktemp("sched-auth")
    records, secrets = [], {}
    for name, perms, pats in (("root", ["admin"], None), ("reader", ["read"], None),
                              ("ok-admin", ["admin"], ["ok.>"]), ("ok-reader", ["read"], ["ok.>"])):
        kid, secret = K.new_secret()
        records.append(K.KeyRecord(kid, name, K.hash_secret(secret), K.make_scopes(perms, pats)))
        secrets[name] = secret
    K.write_keys(str(d / "keys.yaml"), records)
    s = ServerProcess(str(d / "data"), ["--shards", str(SHARDS)],
                      env={"SHARDQ_AUTH__ENABLED": "true", "SHARDQ_AUTH__KEYS_FILE": str(d / "keys.yaml")}).start()
    yield s, secrets
    s.kill()


def test_permissions_and_type_scopes(keyed) -> None:
    srv, secrets = keyed

    def as_key(name: str) -> Client:
        return Client(srv.url, api_key=secrets[name], timeout=10)

    with as_key("root") as root, as_key("reader") as reader, as_key("ok-admin") as ok_admin, \
            as_key("ok-reader") as ok_reader:
        others = [name_on(i, "other") for i in range(SHARDS)]
        oks = [name_on(i, "ok") for i in range(SHARDS)]
        for n in others:
            root.schedule_add(n, "other.job", every=60)
        for n in oks:
            ok_admin.schedule_add(n, "ok.job", every=60)  # on each shard, forwarded or not
        with pytest.raises(Forbidden, match="admin"):
            reader.schedule_add("nope", "ok.job", every=60)
        with pytest.raises(Forbidden, match="^type:"):
            ok_admin.schedule_add("nope", "other.job", every=60)
        with pytest.raises(Forbidden, match="^name:"):
            ok_admin.schedule_add(others[0], "ok.job", every=60, replace=True)
        assert sorted(s["name"] for s in reader.schedules()) == sorted(others + oks)
        assert sorted(s["name"] for s in ok_reader.schedules()) == sorted(oks)
        for n in others:  # hidden from the scoped keys, on either shard
            with pytest.raises(NotFound):
                ok_reader.schedule(n)
            with pytest.raises(NotFound):
                ok_admin.schedule_pause(n)
            with pytest.raises(NotFound):
                ok_admin.schedule_remove(n)
            with pytest.raises(Forbidden):
                reader.schedule_remove(n)
        for n in oks:
            assert ok_admin.schedule_pause(n)["paused"] is True
            ok_admin.schedule_remove(n)
        assert sorted(s["name"] for s in root.schedules()) == sorted(others)
