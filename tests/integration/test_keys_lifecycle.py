"""API keys with the server running: the CLI round trip, revocation, rotation, SIGHUP and mtime
reloads, expiry, a bad keys file, the deprecated plaintext keys, the insecure-channel rule, the
auth-failure metric, and a search of everything printed for the secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from wire import hello, ping, poll

from shardq.client.connection import Connection
from shardq.errors import Unauthorized
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDQ_")}
    return subprocess.run([sys.executable, "-m", "shardq", "keys", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def create(path: Path, name: str, *extra: str) -> tuple[str, str]:
    """(id, secret) of a new key made with the CLI."""
    run = keys("create", "--keys-file", str(path), "--name", name, *extra)
    assert run.returncode == 0, run.stderr
    secret = run.stdout.splitlines()[-1]
    assert secret.startswith("sq_"), run.stdout
    return secret.split("_")[1], secret


def auth_env(path: Path, **more: str) -> dict[str, str]:
    return {"SHARDQ_AUTH__ENABLED": "true", "SHARDQ_AUTH__KEYS_FILE": str(path), **more}


def login(srv: ServerProcess, secret: str, host: str | None = None) -> Connection:
    c = Connection(host or srv.host, srv.port, timeout=10)
    hello(c, api_key=secret)
    return c


def refused(srv: ServerProcess, secret: str, host: str | None = None) -> str:
    """The message of the Unauthorized a HELLO with ``secret`` gets."""
    with Connection(host or srv.host, srv.port, timeout=10) as c:
        with pytest.raises(Unauthorized) as info:
            hello(c, api_key=secret)
        return info.value.message


def closed_by_server(c: Connection, timeout: float = 5.0) -> str:
    """The server NACKs this connection Unauthorized (rid null) and closes it; the message."""
    c.sock.settimeout(timeout)
    msg = c.receive()
    assert msg.type == MsgType.NACK and msg.header["rid"] is None, msg
    assert msg.header["error"]["code"] == "Unauthorized"
    c.sock.settimeout(timeout)
    assert c.sock.recv(1) == b"", "the connection must be closed"
    return str(msg.header["error"]["message"])


def metric(srv: ServerProcess, reason: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("tq_auth_failures_total{") and f'reason="{reason}"' in line)


def test_cli_round_trip_revoke_rotate_and_no_secret_anywhere(server_factory, tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    kid, secret = create(path, "producer", "--permissions", "submit,read", "--types", "billing.>")
    other_id, other = create(path, "ops", "--permissions", "admin")
    listed = keys("list", "--keys-file", str(path))
    as_json = keys("list", "--keys-file", str(path), "--json")
    assert kid in listed.stdout and "producer" in listed.stdout and "billing.>" in listed.stdout
    assert '"state": "active"' in as_json.stdout
    text = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    hashes = [line.split("hash: ")[1] for line in text.splitlines() if "hash: " in line]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  enabled: true\n  keys_file: {path}\n")
    srv = server_factory("--shards", "2", "--config", str(cfg),
                         env={"SHARDQ_MONITORING__LOG_LEVEL": "debug"})
    with login(srv, secret) as c, login(srv, other) as admin:
        c.call(MsgType.SUBMIT, {"tasks": [{"type": "billing.x", "payload_len": 0}]})
        wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
        assert refused(srv, wrong) == "api_key is missing or not valid"
        assert poll(lambda: metric(srv, "bad_secret") >= 1, timeout=10)
        # rotate: the open connection under the old secret is closed, the new secret works
        rot = keys("rotate", "--keys-file", str(path), kid)
        new = rot.stdout.splitlines()[-1]
        assert rot.returncode == 0 and new.startswith(f"sq_{kid}_") and new != secret
        assert "rotated key" in rot.stderr and "producer" in rot.stderr
        assert "no longer valid (rotated)" in closed_by_server(c)
        assert refused(srv, secret) == "api_key is missing or not valid"
        with login(srv, new) as again:
            ping(again)
        # revoke: the open connection is closed, a new one refused
        with login(srv, new) as c2:
            assert keys("revoke", "--keys-file", str(path), kid).returncode == 0
            assert "no longer valid (revoked)" in closed_by_server(c2)
        assert refused(srv, new) == "api_key is missing or not valid"
        ping(admin)  # the other key's connection goes on
        config_show = subprocess.run([sys.executable, "-m", "shardq", "config", "show", "--config", str(cfg)],
                                     capture_output=True, text=True, cwd=ROOT, timeout=60)
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
        listed_after = keys("list", "--keys-file", str(path))
    assert srv.stop() == 0
    time.sleep(0.2)
    printed = "".join(srv.stdout_lines + srv.stderr_lines)
    assert "keys file reloaded" in printed and "authentication failed" in printed
    outputs = [printed, listed.stdout, listed.stderr, as_json.stdout, config_show.stdout, config_show.stderr,
               scraped, listed_after.stdout, rot.stderr]
    for s in (secret, wrong, new, other):
        for out in outputs:
            assert s not in out
            assert s.split("_", 2)[2] not in out  # not even the random part
    for h in hashes:
        assert all(h not in out for out in outputs[1:4] + outputs[7:8])  # list shows no hash


def test_reload_by_mtime_and_by_sighup_and_expiry(server_factory, tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    a_id, a = create(path, "a", "--permissions", "read")
    srv = server_factory("--shards", "1", env=auth_env(path))
    # mtime: a key created while the server runs works within about a second
    seen = reloads(srv)
    _, c_secret = create(path, "c", "--permissions", "read")
    poll(lambda: reloads(srv) > seen, timeout=5)
    assert _accepted(srv, c_secret)
    # SIGHUP: an edit that keeps size, mtime and inode is not seen by the poll, only by SIGHUP
    with login(srv, a) as conn_a:
        st = path.stat()
        text = path.read_text()
        start = text.index(f"id: {a_id}")
        at = text.index("disabled: false", start)
        with open(path, "r+") as fh:
            fh.seek(len(text[:at].encode()))
            fh.write("disabled: true ")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size
        time.sleep(2.5)
        ping(conn_a)  # still open: the poll saw nothing
        os.kill(srv.pid, signal.SIGHUP)
        assert "no longer valid (disabled)" in closed_by_server(conn_a)
    assert refused(srv, a) == "this API key is disabled"
    seen = reloads(srv)
    assert keys("enable", "--keys-file", str(path), a_id).returncode == 0
    poll(lambda: reloads(srv) > seen, timeout=5)
    assert _accepted(srv, a)
    # expiry: the open connection is closed when the key expires, a new one refused
    seen = reloads(srv)
    _, b = create(path, "b", "--permissions", "read", "--expires", "5s")
    poll(lambda: reloads(srv) > seen, timeout=3)
    with login(srv, b) as conn_b:
        assert "no longer valid (expired)" in closed_by_server(conn_b, timeout=8)
    assert refused(srv, b) == "this API key has expired"
    assert srv.proc is not None and srv.proc.poll() is None  # SIGHUP did not stop the server


def reloads(srv: ServerProcess) -> int:
    return sum("keys file reloaded" in line for line in srv.stderr_lines)


def _accepted(srv: ServerProcess, secret: str) -> bool:
    try:
        with login(srv, secret) as c:
            ping(c)
        return True
    except Unauthorized:
        return False


def test_a_bad_keys_file_is_refused_at_start_and_kept_at_reload(server_factory, tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    _, secret = create(path, "good", "--permissions", "read")
    bad = path.read_text() + "- id: 0123456789ab\n  name: x\n  hash: sha256:00\n  permissions: {read: ['>']}\n"
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(bad)
    run = subprocess.run([sys.executable, "-m", "shardq", "serve", "--port", "0", "--metrics-port", "0",
                          "--data-dir", str(tmp_path / "d")],
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("SHARDQ_")},
                              **auth_env(bad_path)}, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert f"keys file {bad_path}: keys[1] (id 0123456789ab, line " in run.stderr
    assert "hash: must be 'sha256:' and 64 lowercase hex digits" in run.stderr
    srv = server_factory("--shards", "1", env=auth_env(path))
    path.write_text(bad)  # broken while running: the good keys stay
    time.sleep(2.5)
    assert _accepted(srv, secret)
    assert any("keys file not reloaded" in line for line in srv.stderr_lines)
    assert secret not in "".join(srv.stderr_lines + [run.stderr, run.stdout])


def test_deprecated_plaintext_keys_warn_and_import(server_factory, tmp_path) -> None:
    plain = "legacy-plaintext-key-0123456789"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  enabled: true\n  api_keys:\n    - {{key: {plain}, name: old, permissions: [read]}}\n")
    srv = server_factory("--shards", "1", "--config", str(cfg))
    assert _accepted(srv, plain)
    assert any("auth.api_keys is deprecated" in line for line in srv.stderr_lines)
    path = tmp_path / "keys.yaml"
    run = keys("import", "--config", str(cfg), "--keys-file", str(path))
    assert run.returncode == 0 and "imported 1 keys" in run.stdout, run.stderr
    assert plain not in path.read_text() + run.stdout + run.stderr
    assert keys("import", "--config", str(cfg), "--keys-file", str(path)).stdout.startswith("imported 0 keys")
    srv2 = server_factory("--shards", "1", env=auth_env(path))
    assert _accepted(srv2, plain)  # the same secret, now hashed
    assert not any("auth.api_keys is deprecated" in line for line in srv2.stderr_lines)


def _non_loopback_address() -> str | None:
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing address
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


@pytest.mark.parametrize("allow", [False, True])
def test_plaintext_from_a_non_loopback_address(server_factory, tmp_path, allow: bool) -> None:
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the rule is unit-tested too)")
    path = tmp_path / "keys.yaml"
    _, secret = create(path, "w", "--permissions", "read")
    env = auth_env(path, **({"SHARDQ_AUTH__ALLOW_INSECURE": "true"} if allow else {}))
    srv = server_factory("--shards", "1", "--host", "0.0.0.0", env=env)
    assert _accepted(srv, secret)  # loopback is always fine
    if allow:
        with login(srv, secret, host=addr) as c:
            ping(c)
    else:
        assert "not accepted over plaintext from a non-loopback address" in refused(srv, secret, host=addr)
        assert poll(lambda: metric(srv, "insecure_channel") >= 1, timeout=10)


def test_repeated_failures_from_one_address_are_slowed(server_factory, tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    _, secret = create(path, "w", "--permissions", "read")
    srv = server_factory("--shards", "1", env=auth_env(path))
    took = []
    for i in range(6):
        t0 = time.monotonic()
        refused(srv, f"sq_0123456789ab_wrong{i}")
        took.append(time.monotonic() - t0)
    assert max(took[:3]) < 0.2 and took[4] >= 0.2 and took[5] >= 0.4, took
    with login(srv, secret) as c:  # a good key is not slowed, and the loop was never blocked
        t0 = time.monotonic()
        ping(c)
        assert time.monotonic() - t0 < 0.2
    assert poll(lambda: metric(srv, "unknown_key") >= 6, timeout=10)


def test_repeated_failures_over_http_are_slowed_too(server_factory, tmp_path) -> None:
    """The HTTP API authenticates through the same Operations.authenticate, and waits out the
    same per-address delay before its 401 (it used to answer at once)."""
    import http.client

    path = tmp_path / "keys.yaml"
    create(path, "w", "--permissions", "read")
    srv = server_factory("--shards", "1", env=auth_env(path))
    took = []
    for i in range(6):
        conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=20)
        t0 = time.monotonic()
        conn.request("GET", "/api/v1/stats", headers={"Authorization": f"Bearer sq_0123456789ab_wrong{i}"})
        status = conn.getresponse().status
        took.append(time.monotonic() - t0)
        conn.close()
        assert status == 401
    assert max(took[:3]) < 0.2 and took[4] >= 0.2 and took[5] >= 0.4, took
