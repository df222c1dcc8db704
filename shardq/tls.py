"""TLS for every shardq listener and client: the one place that builds an ``ssl.SSLContext``.

Rules:
1. Servers: TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AES-GCM or
   ChaCha20-Poly1305 (TLS 1.3's suites are all AEAD with forward secrecy). No compression, no
   renegotiation. ``api.tls_ca_file`` turns on client certificates: one that does not verify
   against that CA fails the handshake. A client that sends none fails it too on /metrics
   (CERT_REQUIRED); on the protocol port the handshake lets it through (CERT_OPTIONAL,
   ``mutual_by_session``) and its session refuses it before reading a byte, with an
   ``Unauthorized`` NACK saying a client certificate is required (session.py): the TLS alert
   alone never reaches the client, whose TLS 1.3 handshake is over before the server's ends,
   and it would only see the connection close. The TCP protocol port, the HTTP API and /metrics
   all take their context from ``ServerTLS``.
2. A misconfiguration is a ``ConfigError`` naming the config key and the file (missing or
   unreadable file, no PEM in it, a key that does not match the certificate, an encrypted key),
   raised before anything listens: ``shardq serve`` exits 2 with it.
3. Rotation: ``ServerTLS.reload()`` builds a whole new context from the files and swaps it in;
   handshakes that start afterwards use it, connections already up keep theirs. A reload that
   fails keeps the old context and says why (the server goes on serving with what it had).
4. Clients verify the server by default: its chain against ``ca`` (the system CAs when none is
   given) and its name against the host of the URL. A client certificate is sent when given.
   The ALPN offer names the shard a shard-aware client wants (protocol/tls_hello.py).
5. No key material is ever logged or put in an error: errors name files, never contents.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from shardq.errors import ConfigError
from shardq.protocol.tls_hello import ALPN, client_alpn

if TYPE_CHECKING:
    from shardq.config import ApiConfig

log = logging.getLogger("shardq.tls")

MIN_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites (OpenSSL names): forward secrecy (ECDHE) and an AEAD cipher, nothing else.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _read_pem(key: str, path: str, marker: bytes, what: str) -> None:
    """Raise a ConfigError naming ``key`` and ``path`` unless the file is readable and holds
    ``marker`` (a PEM header)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{key}: {path!r} cannot be read ({exc.strerror or exc})") from None
    if marker not in text:
        raise ConfigError(f"{key}: {path!r} holds no PEM {what}")


def _no_password() -> bytes:
    raise ConfigError("encrypted")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, cert_key: str, key_key: str) -> None:
    _read_pem(cert_key, cert, b"-----BEGIN CERTIFICATE-----", "certificate")
    _read_pem(key_key, key, b"PRIVATE KEY-----", "private key")
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ConfigError:
        raise ConfigError(f"{key_key}: {key!r} is encrypted (allowed: an unencrypted PEM private "
                          f"key, readable only by the server's user)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(f"{key_key}: {key!r} does not match the certificate in "
                              f"{cert_key} {cert!r}") from None
        raise ConfigError(f"{cert_key}/{key_key}: {cert!r} with {key!r} cannot be loaded "
                          f"({exc.reason or exc})") from None


def server_context(cert: str, key: str, ca: str | None = None, *, alpn: str | None = ALPN,
                   mutual_by_session: bool = False,
                   keys: tuple[str, str, str] = ("api.tls_cert_file", "api.tls_key_file",
                                                 "api.tls_ca_file")) -> ssl.SSLContext:
    """A server context under rule 1 (``keys``: the config keys the errors name).
    ``mutual_by_session``: with ``ca``, a client without a certificate passes the handshake and
    the listener's sessions must refuse it (``ServerTLS.refuses``)."""
    cert_key, key_key, ca_key = keys
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if alpn is not None:
        ctx.set_alpn_protocols([alpn])
    _load_chain(ctx, cert, key, cert_key, key_key)
    if ca is not None:
        _read_pem(ca_key, ca, b"-----BEGIN CERTIFICATE-----", "certificate")
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"{ca_key}: {ca!r} cannot be loaded ({exc.reason or exc})") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL if mutual_by_session else ssl.CERT_REQUIRED
    return ctx


class ServerTLS:
    """The context a listener uses for new handshakes, and its reload (rule 3)."""

    def __init__(self, api: ApiConfig, alpn: str | None = ALPN, mutual_by_session: bool = False) -> None:
        assert api.tls_cert_file is not None and api.tls_key_file is not None
        self.cert, self.key, self.ca = api.tls_cert_file, api.tls_key_file, api.tls_ca_file
        self.alpn = alpn
        self.mutual_by_session = mutual_by_session
        self.context = self._build()
        self.reloads = 0

    @classmethod
    def from_config(cls, api: ApiConfig, alpn: str | None = ALPN,
                    mutual_by_session: bool = False) -> ServerTLS | None:
        """None when ``api.tls_enabled`` is off; raises ConfigError (rule 2)."""
        return cls(api, alpn, mutual_by_session) if api.tls_enabled else None

    @property
    def mutual(self) -> bool:
        return self.ca is not None

    def refuses(self, peercert: object) -> str | None:
        """Why a session over this TLS must be refused before it reads anything (rule 1), or
        None. ``peercert``: the transport's ``get_extra_info("peercert")``."""
        if self.mutual and not peercert:
            return ("this server requires a client certificate (mutual TLS): give one signed by "
                    "its CA with --tls-cert/--tls-key (SHARDQ_TLS_CERT/SHARDQ_TLS_KEY)")
        return None

    def _build(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.ca, alpn=self.alpn,
                              mutual_by_session=self.mutual_by_session)

    def reload(self) -> bool:
        """Read the files again; True when the new context is in use."""
        try:
            ctx = self._build()
        except ConfigError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        self.context = ctx
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None,
                   shard: int | None = None) -> ssl.SSLContext:
    """A client context under rule 4. Raises ValueError naming the option and file at fault."""
    if key is not None and cert is None:
        raise ValueError("tls_key is set without tls_cert: a client key needs its certificate")
    try:
        if ca is not None:
            _read_pem("tls_ca", ca, b"-----BEGIN CERTIFICATE-----", "certificate")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        ctx.minimum_version = MIN_VERSION
        if cert is not None:
            _load_chain(ctx, cert, key or cert, "tls_cert", "tls_key")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    except ssl.SSLError as exc:
        raise ValueError(f"tls_ca: {ca!r} cannot be loaded ({exc.reason or exc})") from None
    ctx.set_alpn_protocols(client_alpn(shard))
    return ctx


def describe_failure(exc: BaseException, where: str) -> str:
    """One line saying why a TLS connection to ``where`` failed, for a person to act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return (f"TLS: the server certificate of {where} is not trusted: {why} (give the CA that "
                f"signed it with --tls-ca / SHARDQ_TLS_CA, or check the host name in the URL)")
    reason = getattr(exc, "reason", None) or str(exc)
    text = str(exc).upper()
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text or "PACKET_LENGTH_TOO_LONG" in text:
        return (f"TLS: {where} did not answer in TLS ({reason}): is it a plaintext server? "
                f"use shardq:// for one")
    if "CERTIFICATE_REQUIRED" in text or "HANDSHAKE_FAILURE" in text and "ALERT" in text:
        return (f"TLS: {where} requires a client certificate ({reason}): give one with "
                f"--tls-cert/--tls-key (SHARDQ_TLS_CERT/SHARDQ_TLS_KEY)")
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_EXPIRED" in text:
        return f"TLS: {where} refused this client's certificate ({reason})"
    return f"TLS: the handshake with {where} failed ({reason})"


__all__ = ["MIN_VERSION", "ServerTLS", "TLS12_CIPHERS", "client_context", "describe_failure",
           "server_context"]
