"""The insight operations under scoped API keys on a real 2-shard server: a key sees and touches
only the task types its patterns allow, a read key may count but not change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_keys_scopes import MATCH, MISS, TYPE, make_keys

from shardq.client.sync import Client
from shardq.errors import Forbidden
from shardq.testing import ServerProcess


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict]]:
    d = tmp_path_factory.mktemp("insight-scopes")
    secrets = make_keys(d / "keys.yaml")
    s = ServerProcess(str(d / "data"), ["--shards", "2"],
                      env={"SHARDQ_AUTH__ENABLED": "true", "SHARDQ_AUTH__KEYS_FILE": str(d / "keys.yaml")}).start()
    yield s, secrets
    s.kill()


def test_scoped_keys_see_and_touch_only_their_types(scoped) -> None:
    srv, secrets = scoped
    with Client(srv.url, api_key=secrets[("admin", "all")]) as root:
        for task_type in (TYPE, "other.job"):
            for _ in range(4):
                root.submit(task_type, b"", max_retries=0)
        failed = 0
        while failed < 8:
            for task in root.claim("scope-worker", max=8):
                root.fail("scope-worker", task, f"boom {failed}", retry=False)
                failed += 1
        assert root.dlq_groups()["total"] == 8
    with Client(srv.url, api_key=secrets[("read", MATCH)]) as reader:
        assert {g["type"] for g in reader.dlq_groups()["groups"]} == {TYPE}
        assert {t["type"] for t in reader.search_all()} == {TYPE}
        assert {t["type"] for t in reader.type_stats()} == {TYPE}
        assert reader.bulk("delete", dry_run=True)["matched"] == 4
        with pytest.raises(Forbidden):
            reader.bulk("delete")
    with Client(srv.url, api_key=secrets[("admin", MISS)]) as other:
        assert other.bulk("delete")["deleted"] == 4  # other.job only
    with Client(srv.url, api_key=secrets[("admin", "all")]) as root:
        assert {g["type"]: g["count"] for g in root.dlq_groups()["groups"]} == {TYPE: 4}
