"""A full disk on a real tmpfs: every request is answered, reads go on, writes resume by themselves,
no acknowledged task is lost; and the free-space watermark refuses SUBMITs early."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from shardq.client.connection import Connection
from shardq.errors import Unavailable, WireError
from shardq.protocol.frames import MsgType
from tests.integration.wire import claim, complete, hello, ping, query, stats, submit, submit_one

PAYLOAD = 4096
BATCH = 20


@pytest.fixture
def tmpfs(tmp_path):
    """A 32 MiB tmpfs (root only: mounting needs it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test fills a real small disk")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def ballast(path, mib: int) -> str:
    name = str(path / "ballast")
    with open(name, "wb") as f:
        f.write(b"\0" * (mib << 20))
    return name


def start(server_factory, tmpfs, min_free: int):
    # 4 MiB memtables: RocksDB needs room to flush one to resume (docs/architecture.md).
    return server_factory("--shards", "1", data_dir=str(tmpfs / "data"), env={
        "SHARDQ_PERSISTENCE__WRITE_BUFFER_SIZE": str(4 << 20),
        "SHARDQ_PERSISTENCE__MIN_FREE_DISK_BYTES": str(min_free)})


def all_present(srv, ids: list[str]) -> bool:
    with srv.connect() as conn:
        return all(t is not None for i in range(0, len(ids), 1000) for t in query(conn, ids[i:i + 1000]))


def test_full_disk_answers_everything_and_resumes(server_factory, tmpfs) -> None:
    spare = ballast(tmpfs, 8)
    srv = start(server_factory, tmpfs, 0)
    acked: list[str] = []
    refused = 0
    specs = [{"type": "fill", "payload_len": PAYLOAD}] * BATCH
    blob = os.urandom(PAYLOAD) * BATCH
    deadline = time.monotonic() + 90
    with Connection(srv.host, srv.port, timeout=10) as conn:  # a timeout fails the test
        while refused < 5:
            assert time.monotonic() < deadline, "the disk never filled"
            try:
                acked += conn.call(MsgType.SUBMIT, {"tasks": specs}, blob).header["ids"]
            except Unavailable as err:
                refused += 1
                assert err.extra["retry_after_ms"] > 0 and "No space left" in err.message
        assert acked, "nothing was acknowledged before the wall"
        # While full: a new connection is served, reads answer, and writes are refused, not hung.
        with Connection(srv.host, srv.port, timeout=5) as other:
            hello(other)
            ping(other)
            row = stats(other)["shards"][0]
            assert row["writable"] is False and row["disk_free_bytes"] is not None
            assert all(t is not None for t in query(other, acked[-50:]))
            with pytest.raises(Unavailable):
                claim(other, "w1")
        os.unlink(spare)  # 8 MiB back
        t_free = time.monotonic()
        while True:
            try:
                acked += conn.call(MsgType.SUBMIT, {"tasks": specs[:1]}, blob[:PAYLOAD]).header["ids"]
                break
            except Unavailable:
                assert time.monotonic() - t_free < 20, "writes did not resume after space came back"
                time.sleep(0.2)
    assert all_present(srv, acked)
    with srv.connect() as conn:
        assert stats(conn)["shards"][0]["writable"] is True
    log = "".join(srv.stderr_lines)
    assert log.count("writes failing") == 1 and log.count("writes resumed") == 1  # once each
    assert srv.stop() == 0
    srv.restart()
    assert all_present(srv, acked)


def test_watermark_refuses_submits_and_lets_claims_finish(server_factory, tmpfs) -> None:
    srv = start(server_factory, tmpfs, 16 << 20)
    with srv.connect() as conn:
        ids = submit(conn, *[{"type": "w"}] * 3)
        spare = ballast(tmpfs, 20)  # ~12 MiB free: below the 16 MiB watermark
        deadline = time.monotonic() + 5
        while not stats(conn)["shards"][0]["disk_alarm"]:
            assert time.monotonic() < deadline, "the watermark check did not notice"
            time.sleep(0.1)
        with pytest.raises(Unavailable, match="min_free_disk_bytes") as refused:
            submit_one(conn, "w")
        assert refused.value.extra["retry_after_ms"] > 0
        # Claims and results go on: finishing work is how space comes back.
        task = claim(conn, "w1")[0][0]
        assert complete(conn, "w1", task)["status"] == "completed"
        assert query(conn, ids)[0] is not None
        os.unlink(spare)
        deadline = time.monotonic() + 5
        while True:
            try:
                submit_one(conn, "w")
                break
            except WireError:
                assert time.monotonic() < deadline, "SUBMITs still refused after space came back"
                time.sleep(0.1)
