"""What a shard reads of a TLS ClientHello before the handshake: the ALPN protocols offered.

Rules:
1. Bytes in, an answer out; nothing here reads a socket or imports ssl. The shard *peeks* at the
   first bytes of a connection (MSG_PEEK: nothing is consumed) and asks ``read_client_hello``;
   the TLS library then reads the same bytes for the handshake.
2. ALPN travels in the clear in the ClientHello (RFC 7301), which is why a shard-aware client can
   name the shard it wants there (``shardq-shard-3``) and still verify the server's hostname.
3. Three answers: ``NEED_MORE`` (a well-formed prefix: peek again once more has arrived),
   ``NOT_TLS`` (the first byte is not a TLS handshake record: a plaintext client), or a
   ``ClientHello`` with the protocols offered (empty when it offers none, or when what we read
   is not a ClientHello we understand: the TLS library then decides, with a proper alert).
4. A ClientHello may span several records; we read at most MAX_HELLO_BYTES of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECORD_HANDSHAKE: Final = 0x16
HANDSHAKE_CLIENT_HELLO: Final = 0x01
EXT_ALPN: Final = 0x0010
RECORD_HEAD: Final = 5  # content type, legacy version (2), length (2)
# A ClientHello is a few hundred bytes (post-quantum key shares take it to ~2 KiB); what we do not
# find in this many bytes we do not look for.
MAX_HELLO_BYTES: Final = 16 * 1024

# The ALPN protocol every shardq TLS server selects, and the one a client adds to ask for a shard.
ALPN: Final = "shardq"
SHARD_ALPN_PREFIX: Final = "shardq-shard-"


@dataclass(frozen=True, slots=True)
class ClientHello:
    alpn: tuple[str, ...]  # the protocols the client offers, in its order


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_MORE: Final = _Signal("NEED_MORE")
NOT_TLS: Final = _Signal("NOT_TLS")
UNREADABLE: Final = ClientHello(())  # not a ClientHello we understand: offers nothing we read
_BAD_RECORD: Final = _Signal("BAD_RECORD")


def shard_alpn(shard: int) -> str:
    """The ALPN protocol name that asks for ``shard``."""
    return f"{SHARD_ALPN_PREFIX}{shard}"


def client_alpn(shard: int | None) -> list[str]:
    """What a client offers: the shard it wants first (when it wants one), then plain ``shardq``,
    which is what the server selects."""
    return [ALPN] if shard is None else [shard_alpn(shard), ALPN]


def wanted_shard(hello: ClientHello) -> int | None:
    """The shard a ClientHello asks for (the first ``shardq-shard-K`` offered), or None."""
    for name in hello.alpn:
        if name.startswith(SHARD_ALPN_PREFIX):
            digits = name[len(SHARD_ALPN_PREFIX):]
            if digits.isascii() and digits.isdigit() and len(digits) <= 4:
                return int(digits)
    return None


def _handshake_bytes(data: bytes) -> bytes | _Signal:
    """The handshake-layer bytes carried by the records at the start of ``data``."""
    out = bytearray()
    pos = 0
    while True:
        if len(data) - pos < RECORD_HEAD:
            return bytes(out) if out else NEED_MORE
        if data[pos] != RECORD_HANDSHAKE:
            return NOT_TLS if pos == 0 else bytes(out)
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length == 0 or length > 16384 + 2048:
            return _BAD_RECORD
        if len(data) - pos - RECORD_HEAD < length:
            # The record is still arriving: what we have of it is all we can parse.
            out += data[pos + RECORD_HEAD:]
            return bytes(out)
        out += data[pos + RECORD_HEAD:pos + RECORD_HEAD + length]
        pos += RECORD_HEAD + length
        if pos >= len(data):
            return bytes(out)


def read_client_hello(data: bytes) -> ClientHello | _Signal:
    """Rule 3, for the bytes peeked so far."""
    if not data:
        return NEED_MORE
    if data[0] != RECORD_HANDSHAKE:
        return NOT_TLS
    hs = _handshake_bytes(data[:MAX_HELLO_BYTES])
    if hs is NEED_MORE or hs is NOT_TLS:
        return hs
    if not isinstance(hs, bytes):
        return UNREADABLE
    if len(hs) < 4:
        return NEED_MORE if len(data) < MAX_HELLO_BYTES else UNREADABLE
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        return UNREADABLE
    body_len = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + body_len:
        return NEED_MORE if len(data) < MAX_HELLO_BYTES else UNREADABLE
    return _parse_body(hs[4:4 + body_len])


def _parse_body(body: bytes) -> ClientHello:
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        if pos == len(body):
            return UNREADABLE  # no extensions at all
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
        if end > len(body):
            return UNREADABLE
        while pos + 4 <= end:
            ext_type = int.from_bytes(body[pos:pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2:pos + 4], "big")
            pos += 4
            if pos + ext_len > end:
                return UNREADABLE
            if ext_type == EXT_ALPN:
                return ClientHello(_alpn_names(body[pos:pos + ext_len]))
            pos += ext_len
    except IndexError:
        return UNREADABLE
    return UNREADABLE


def _alpn_names(ext: bytes) -> tuple[str, ...]:
    if len(ext) < 2 or int.from_bytes(ext[:2], "big") != len(ext) - 2:
        return ()
    names = []
    pos = 2
    while pos < len(ext):
        n = ext[pos]
        name = ext[pos + 1:pos + 1 + n]
        if n == 0 or len(name) != n:
            return ()
        names.append(name.decode("latin-1"))
        pos += 1 + n
    return tuple(names)


__all__ = ["ALPN", "ClientHello", "NEED_MORE", "NOT_TLS", "SHARD_ALPN_PREFIX", "client_alpn",
           "read_client_hello", "shard_alpn", "wanted_shard"]
