"""TLS without a server: the ClientHello reader, the contexts shardq/tls.py builds, and the
client options that select TLS."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from tlsfiles import TlsFiles  # noqa: E402

from shardq import AsyncClient, Client  # noqa: E402
from shardq.client.connection import parse_target  # noqa: E402
from shardq.errors import ConfigError  # noqa: E402
from shardq.protocol.tls_hello import (  # noqa: E402
    NEED_MORE,
    NOT_TLS,
    ClientHello,
    client_alpn,
    read_client_hello,
    wanted_shard,
)
from shardq.tls import TLS12_CIPHERS, client_context, server_context  # noqa: E402


def client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("shard", [None, 0, 3, 1023])
def test_the_alpn_offer_is_read_from_a_real_client_hello(shard: int | None) -> None:
    data = client_hello(client_alpn(shard))
    hello = read_client_hello(data)
    assert isinstance(hello, ClientHello)
    assert list(hello.alpn) == client_alpn(shard)
    assert wanted_shard(hello) == shard
    for cut in range(0, len(data), 7):  # every prefix asks for more, none is mistaken
        assert read_client_hello(data[:cut]) is NEED_MORE


def test_split_records_no_alpn_and_plaintext() -> None:
    data = client_hello(client_alpn(2))
    body = data[5:]
    # the same handshake message in two records
    split = (b"\x16\x03\x01" + (40).to_bytes(2, "big") + body[:40]
             + b"\x16\x03\x01" + (len(body) - 40).to_bytes(2, "big") + body[40:])
    assert wanted_shard(read_client_hello(split)) == 2  # type: ignore[arg-type]
    assert read_client_hello(client_hello(None)) == ClientHello(())
    frame = b"\x00\x00\x00\x20\x01"  # a shardq frame never starts with 0x16 (a 369 MB length)
    assert read_client_hello(frame) is NOT_TLS
    assert read_client_hello(b"GET / HTTP/1.1\r\n") is NOT_TLS


@pytest.mark.parametrize("name,shard", [("shardq-shard-7", 7), ("shardq-shard-", None),
                                        ("shardq-shard-x", None), ("shardq-shard-²", None),
                                        ("shardq-shard-123456", None), ("shardq", None)])
def test_only_a_well_formed_shard_name_asks_for_a_shard(name: str, shard: int | None) -> None:
    assert wanted_shard(ClientHello((name,))) == shard


@given(st.binary(max_size=600))
def test_no_input_makes_the_reader_raise(data: bytes) -> None:
    result = read_client_hello(b"\x16" + data)
    assert result is NEED_MORE or result is NOT_TLS or isinstance(result, ClientHello)


def test_server_context_is_tls12_plus_with_forward_secret_aead_suites(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    ctx = server_context(files.server.cert, files.server.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    suites = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert suites and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in suites)
    assert TLS12_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"
    assert server_context(files.server.cert, files.server.key, files.ca_file).verify_mode == ssl.CERT_REQUIRED
    assert server_context(files.server.cert, files.server.key, files.ca_file,
                          mutual_by_session=True).verify_mode == ssl.CERT_OPTIONAL


def test_server_context_errors_name_the_key_and_file(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    other = TlsFiles(tmp_path / "o", "o")
    with pytest.raises(ConfigError, match=r"api.tls_key_file: '.*o-server.key' does not match the "
                                          r"certificate in api.tls_cert_file '.*ca-server.crt'"):
        server_context(files.server.cert, other.server.key)
    with pytest.raises(ConfigError, match=r"api.tls_cert_file: '.*ca-server.key' holds no PEM certificate"):
        server_context(files.server.key, files.server.key)
    with pytest.raises(ConfigError, match=r"api.tls_ca_file: '/nonexistent' cannot be read"):
        server_context(files.server.cert, files.server.key, "/nonexistent")


def test_client_context_verifies_by_default_and_offers_the_shard(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    ctx = client_context(files.ca_file, shard=4)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert client_context().verify_mode == ssl.CERT_REQUIRED  # the system CAs
    with pytest.raises(ValueError, match="tls_key is set without tls_cert"):
        client_context(key=files.server.key)
    with pytest.raises(ValueError, match="tls_ca: '/nonexistent' cannot be read"):
        client_context("/nonexistent")


def test_urls_select_tls_and_tls_options_need_a_tls_url(tmp_path: Path) -> None:
    assert parse_target("shardqs://db.example:7443") == ("db.example", 7443, True)
    assert parse_target("shardq://h") == ("h", 7070, False)
    assert parse_target("h:1") == ("h", 1, False)
    with pytest.raises(ValueError, match="shardqs://host:port for TLS"):
        parse_target("https://h:1")
    files = TlsFiles(tmp_path)
    for cls in (Client, AsyncClient):
        assert cls("shardqs://127.0.0.1:1", tls_ca=files.ca_file).ssl_context is not None  # type: ignore[operator]
        assert cls("shardq://127.0.0.1:1").ssl_context is None  # type: ignore[operator]
        with pytest.raises(ValueError, match="tls_ca given, but shardq://127.0.0.1:1 is not a TLS URL"):
            cls("shardq://127.0.0.1:1", tls_ca=files.ca_file)  # type: ignore[operator]
