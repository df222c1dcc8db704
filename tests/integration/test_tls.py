"""TLS on the protocol port and /metrics, against real `shardq serve` processes: every message
type over TLS, refusals that are quick and say why, stalled handshakes, SIGHUP rotation,
misconfigurations at start, and shard-direct connections over shardqs:// (the ALPN offer)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tlsfiles import TlsFiles

import shardq
from shardq import AsyncClient, Client
from shardq.client.connection import Connection
from shardq.client.core import ConnectionClosed
from shardq.errors import ProtocolError, TLSError, Unauthorized
from shardq.protocol.frames import MsgType
from shardq.protocol.tls_hello import client_alpn

HERE = Path(__file__).resolve().parent


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return TlsFiles(tmp_path / "certs")


def tls_url(srv) -> str:  # type: ignore[no-untyped-def]
    return f"shardqs://127.0.0.1:{srv.port}"


def serve(server_factory, files: TlsFiles, *args: str, mutual: bool = False, **env: str):  # type: ignore[no-untyped-def]
    return server_factory("--shards", "1", *args, env={**files.server_env(mutual), **env})


def test_every_message_type_round_trips_over_tls(server_factory, tls: TlsFiles) -> None:
    srv = serve(server_factory, tls)
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=10) as c:
        assert c.ping() > 0                                                    # HELLO, PING
        c.register_worker("w1", hostname="h", pid=1)                           # REGISTER_WORKER
        done_id, fail_id, cancel_id = (c.submit("t", {"n": i}) for i in range(3))  # SUBMIT
        c.cancel(cancel_id)                                                    # CANCEL
        tasks = {t.id: t for t in c.claim("w1", max=10, wait=1)}               # CLAIM
        assert set(tasks) == {done_id, fail_id}
        assert c.heartbeat("w1", active=list(tasks))[1] == []                  # HEARTBEAT
        c.complete("w1", tasks[done_id], b"result bytes")                      # RESULT
        c.fail("w1", tasks[fail_id], "no", retry=False)
        assert c.status(done_id, with_result=True).result == b"result bytes"   # QUERY_STATUS
        assert [t.id for t in c.list("dead_letter")] == [fail_id]              # LIST_TASKS
        assert c.requeue([fail_id])["requeued"] == 1                           # REQUEUE
        assert c.stats()["totals"]["completed"] == 1                           # GET_STATS
        assert c.deregister_worker("w1") == 0                                  # DEREGISTER_WORKER
        # a frame bigger than one TLS record (16 KiB) both ways
        big = os.urandom(300_000)
        big_id = c.submit("big", big)
        assert c.status(big_id, with_result=False).status == "pending"
        assert c.claim("w2", max=1, types=["big"])[0].payload == big

    async def aio() -> None:
        async with AsyncClient(tls_url(srv), tls_ca=tls.ca_file, timeout=10) as ac:
            ids = await asyncio.gather(*(ac.submit("a", {"i": i}) for i in range(50)))
            assert len(set(ids)) == 50
            assert ac.server_info["shards"] == 1
    asyncio.run(aio())


def test_a_plaintext_client_on_the_tls_port_is_told_at_once(server_factory, tls: TlsFiles) -> None:
    srv = serve(server_factory, tls)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="speaks TLS only: connect with a shardqs:// URL"):
        Client(srv.url, timeout=10, retries=0).connect()
    assert time.monotonic() - started < 2.0
    # and a TLS client on a plaintext server is told what is wrong, not left hanging
    plain = server_factory("--shards", "1")
    with pytest.raises(TLSError, match="did not answer in TLS"):
        Client(tls_url(plain), tls_ca=tls.ca_file, timeout=10).connect()


def test_an_untrusted_or_expired_server_certificate_is_refused_by_the_client(
        server_factory, tls: TlsFiles, tmp_path: Path) -> None:
    srv = serve(server_factory, tls)
    other = TlsFiles(tmp_path / "other", "other")
    started = time.monotonic()
    with pytest.raises(TLSError, match="not trusted: unable to get local issuer certificate"):
        Client(tls_url(srv), tls_ca=other.ca_file, timeout=10).connect()
    with pytest.raises(TLSError, match="not trusted"):  # the system CAs do not know trustme's
        Client(tls_url(srv), timeout=10).connect()
    assert time.monotonic() - started < 5.0, "a certificate error is not retried"
    misnamed = server_factory("--shards", "1", env=tls.server_env(pair=tls.issue("misnamed", "example.test")))
    with pytest.raises(TLSError, match="not trusted: IP address mismatch"):
        Client(tls_url(misnamed), tls_ca=tls.ca_file, timeout=10).connect()
    expired = server_factory("--shards", "1", env=tls.server_env(pair=tls.expired()))
    with pytest.raises(TLSError, match="certificate has expired"):
        Client(tls_url(expired), tls_ca=tls.ca_file, timeout=10).connect()
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=10) as ok:  # the server is fine
        ok.connect()


def test_mutual_tls_refuses_a_client_without_a_valid_certificate(
        server_factory, tls: TlsFiles, tmp_path: Path) -> None:
    srv = serve(server_factory, tls, mutual=True)
    with pytest.raises(Unauthorized, match="requires a client certificate"):
        Client(tls_url(srv), tls_ca=tls.ca_file, timeout=10).connect()
    stranger = TlsFiles(tmp_path / "stranger", "stranger").client()
    with pytest.raises((TLSError, ConnectionClosed)):
        Client(tls_url(srv), tls_ca=tls.ca_file, tls_cert=stranger.cert, tls_key=stranger.key,
               timeout=10).connect()
    assert any("TLS handshake failed" in line and "certificate verify failed" in line
               for line in srv.stderr_lines), "".join(srv.stderr_lines[-5:])

    async def aio_without_cert() -> None:
        with pytest.raises(Unauthorized, match="requires a client certificate"):
            await AsyncClient(tls_url(srv), tls_ca=tls.ca_file, timeout=10).connect()
    asyncio.run(aio_without_cert())
    mine = tls.client()
    with Client(tls_url(srv), tls_ca=tls.ca_file, tls_cert=mine.cert, tls_key=mine.key) as c:
        assert c.submit("t")
    # /metrics asks for a client certificate too
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{srv.metrics_port}/metrics", context=ctx, timeout=5).read()
    ctx.load_cert_chain(mine.cert, mine.key)
    body = urllib.request.urlopen(f"https://127.0.0.1:{srv.metrics_port}/metrics", context=ctx,
                                  timeout=5).read()
    assert b"tq_shard_up" in body


def test_metrics_are_served_over_tls_only(server_factory, tls: TlsFiles) -> None:
    srv = serve(server_factory, tls)
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    body = urllib.request.urlopen(f"https://127.0.0.1:{srv.metrics_port}/metrics", context=ctx,
                                  timeout=5).read()
    assert b"tq_shard_up" in body
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5).read()
    # a scraper that connects and stalls holds up no other scrape
    with socket.create_connection(("127.0.0.1", srv.metrics_port)):
        body = urllib.request.urlopen(f"https://127.0.0.1:{srv.metrics_port}/metrics", context=ctx,
                                      timeout=5).read()
        assert b"tq_shard_up" in body


def _client_hello(shard: int | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(client_alpn(shard))
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("sends", ["nothing", "half a record", "a whole ClientHello"])
def test_a_stalled_handshake_is_closed_after_the_connection_timeout(server_factory, tls: TlsFiles,
                                                                    sends: str) -> None:
    srv = serve(server_factory, tls, "--connection-timeout-ms", "700")
    first = {"nothing": b"", "half a record": _client_hello()[:40],
             "a whole ClientHello": _client_hello(0)}[sends]
    stalled = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
    started = time.monotonic()
    for s in stalled:
        s.sendall(first)
        s.settimeout(5)
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=5) as other:  # served meanwhile
        assert other.submit("t")
    for s in stalled:
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        if data:  # the server's TLS alert, or its handshake reply, then the close
            while data:
                data = s.recv(4096)
        s.close()
    took = time.monotonic() - started
    assert 0.6 <= took < 3.5, took
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=5) as again:
        assert again.stats()["connections"] == 1  # the stalled ones are gone, slots and all


def _swap_certificate(tls: TlsFiles, new: TlsFiles) -> None:
    for src, dst in ((new.server.cert, tls.server.cert), (new.server.key, tls.server.key)):
        tmp = dst + ".new"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def test_sighup_reloads_the_certificate_without_dropping_connections(
        server_factory, tls: TlsFiles, tmp_path: Path) -> None:
    srv = server_factory("--shards", "2", env=tls.server_env())
    metrics_url = f"https://127.0.0.1:{srv.metrics_port}/metrics"
    old_ctx = ssl.create_default_context(cafile=tls.ca_file)
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=5) as before:
        before.connect()
        rotated = TlsFiles(tmp_path / "rotated", "rotated")
        _swap_certificate(tls, rotated)
        os.kill(srv.pid, signal.SIGHUP)  # the supervisor passes it on to every child
        deadline = time.monotonic() + 10
        while True:
            try:
                with Client(tls_url(srv), tls_ca=rotated.ca_file, timeout=5) as after:
                    after.connect()
                    break
            except TLSError:
                assert time.monotonic() < deadline, "new handshakes never saw the new certificate"
                time.sleep(0.1)
        for shard in (0, 1):  # every shard reloaded, not only the one that answered
            with Client(tls_url(srv), tls_ca=rotated.ca_file, timeout=5, shard=shard) as c:
                assert c.connect().shard == shard
            with pytest.raises(TLSError, match="not trusted"):
                Client(tls_url(srv), tls_ca=tls.ca_file, timeout=5, shard=shard).connect()
        assert before.submit("still here")  # the open connection kept its session
        body = urllib.request.urlopen(metrics_url, timeout=5,
                                      context=ssl.create_default_context(cafile=rotated.ca_file)).read()
        assert b"tq_shard_up" in body
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(metrics_url, context=old_ctx, timeout=5).read()
    # a reload from a broken file keeps the certificate it had
    Path(tls.server.key).write_text("not a key")
    os.kill(srv.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "TLS reload failed, still serving the previous certificate" not in "".join(srv.stderr_lines):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with Client(tls_url(srv), tls_ca=rotated.ca_file, timeout=5) as c:
        assert c.submit("t")
    assert srv.proc is not None and srv.proc.poll() is None


def _serve_and_fail(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardq", "serve", "--port", "0", "--metrics-port", "0",
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_startup_misconfigurations_exit_2_naming_the_key_and_file(tls: TlsFiles, tmp_path: Path) -> None:
    other = TlsFiles(tmp_path / "other", "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    base = tls.server_env()
    cases = [
        ({**base, "SHARDQ_API__TLS_CERT_FILE": str(tmp_path / "missing.crt")},
         f"api.tls_cert_file: '{tmp_path / 'missing.crt'}' cannot be read (No such file or directory)"),
        ({**base, "SHARDQ_API__TLS_KEY_FILE": other.server.key},
         f"api.tls_key_file: '{other.server.key}' does not match the certificate in "
         f"api.tls_cert_file '{tls.server.cert}'"),
        ({**base, "SHARDQ_API__TLS_CA_FILE": str(garbage)},
         f"api.tls_ca_file: '{garbage}' holds no PEM certificate"),
        ({"SHARDQ_API__TLS_ENABLED": "true"}, "api.tls_cert_file: None is missing"),
        ({**base, "SHARDQ_API__TLS_KEY_FILE": ""}, "api.tls_key_file: None is missing"),
    ]
    for env, message in cases:
        proc = _serve_and_fail(tmp_path, env)
        assert proc.returncode == 2, (env, proc.stderr)
        assert message in proc.stderr, (message, proc.stderr)
        assert "READY" not in proc.stdout
        assert "BEGIN" not in proc.stderr  # no key material in the message


def test_shard_direct_over_tls_lands_on_the_shard_asked_for(server_factory, tls: TlsFiles) -> None:
    srv = server_factory("--shards", "3", env=tls.server_env())
    url = tls_url(srv)
    for _ in range(2):  # whichever shard the acceptor picks first
        for shard in range(3):
            with Client(url, tls_ca=tls.ca_file, shard=shard) as c:
                assert c.connect().shard == shard
                ids = c.submit_many([shardq.Job("t", b"") for _ in range(20)])
                assert {int(i[:8], 16) % 3 for i in ids} == {shard}

    async def aio() -> None:
        for shard in range(3):
            async with AsyncClient(url, tls_ca=tls.ca_file, shard=shard) as ac:
                await ac.connect()
                assert ac.shard == shard
    asyncio.run(aio())
    with Client(url, tls_ca=tls.ca_file) as c:
        rows = c.stats()["shards"]
        assert sum(r["connections"] for r in rows) == 1, rows  # the moved ones left no slot behind
    # a shard that does not exist is not asked for; whoever got the connection serves it
    with Client(url, tls_ca=tls.ca_file, shard=9) as c:
        assert c.connect().shard in (0, 1, 2)


def test_a_worker_over_tls_pinned_to_a_shard(server_factory, tls: TlsFiles, tmp_path: Path) -> None:
    srv = server_factory("--shards", "2", env=tls.server_env(mutual=True))
    mine = tls.client()
    url = tls_url(srv)
    with Client(url, tls_ca=tls.ca_file, tls_cert=mine.cert, tls_key=mine.key, shard=1) as producer:
        ids = producer.submit_many([shardq.Job("add", {"a": i, "b": 1}) for i in range(50)])
        env = dict(os.environ, SHARDQ_TLS_CA=tls.ca_file, SHARDQ_TLS_CERT=mine.cert,
                   SHARDQ_TLS_KEY=mine.key, PYTHONPATH=os.pathsep.join(
                       p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run([sys.executable, "-m", "shardq.worker", "worker_apps:app", "--server", url,
                               "--shard", "1", "--burst", "--concurrency", "4"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "(shard 1 of 2)" in proc.stderr
        assert all(t.status == "completed" for t in producer.status_many(ids))
        rows = {r["shard"]: r for r in producer.stats()["shards"]}
        assert rows[0]["cross_shard_claims"] == rows[1]["cross_shard_claims"] == 0, rows


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardq", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_cli_commands_and_ping_over_tls(server_factory, tls: TlsFiles, tmp_path: Path) -> None:
    cfg = tmp_path / "auth.yaml"
    cfg.write_text("auth:\n  enabled: true\n  api_keys:\n"
                   "    - {key: 'k-0123456789abcdef', name: ops, permissions: [submit, read, admin]}\n")
    srv = serve(server_factory, tls, "--config", str(cfg))
    url = tls_url(srv)
    env = {"SHARDQ_TLS_CA": tls.ca_file, "SHARDQ_API_KEY": "k-0123456789abcdef"}
    out = cli("submit", "t", "--server", url, env=env)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    out = cli("status", task_id, "--server", url, "--tls-ca", tls.ca_file, "--json")
    assert out.returncode == 1 and "api_key is missing" in out.stderr  # TLS fine, no key
    out = cli("status", task_id, "--server", url, "--json", env=env)
    assert out.returncode == 0 and task_id in out.stdout, out.stderr
    # ping needs no key: Unauthorized still proves the server is up
    out = cli("ping", "--server", url, "--tls-ca", tls.ca_file)
    assert out.returncode == 0, out.stderr
    assert "up (" in out.stdout and "TLS" in out.stdout and "API key required" in out.stdout
    out = cli("ping", "--server", url)  # not trusted: a clear line, exit 1
    assert out.returncode == 1 and "not trusted" in out.stderr, out.stderr
    out = cli("ping", "--server", srv.url, "--tls-ca", tls.ca_file)  # a setting that does nothing
    assert out.returncode == 2 and "not a TLS URL: use shardqs://" in out.stderr, out.stderr
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    out = cli("ping", "--server", f"shardq://127.0.0.1:{dead.getsockname()[1]}")
    dead.close()
    assert out.returncode == 1 and "cannot connect" in out.stderr


def test_a_connection_over_the_limit_under_tls_is_closed_not_answered_in_plaintext(
        server_factory, tls: TlsFiles) -> None:
    srv = serve(server_factory, tls, "--max-connections", "1")
    with Client(tls_url(srv), tls_ca=tls.ca_file, timeout=5) as first:
        first.connect()
        started = time.monotonic()
        with pytest.raises((TLSError, OSError, shardq.errors.ShardqError)) as err:
            Connection("127.0.0.1", srv.port, timeout=5,
                       ssl_context=Client(tls_url(srv), tls_ca=tls.ca_file).ssl_context).call(
                MsgType.PING, {})
        assert time.monotonic() - started < 2.0
        assert "TLS only" not in str(err.value)
