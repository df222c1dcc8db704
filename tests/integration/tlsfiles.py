"""Certificates for the TLS tests, made with trustme: a CA, server and client certificates, written
to files the way an operator would have them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Pair:
    cert: str
    key: str


class TlsFiles:
    """A CA in ``dir`` and what it signs; ``server_env`` is the config that serves with it."""

    def __init__(self, dir: Path, name: str = "ca") -> None:
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = trustme.CA()
        self.ca_file = str(dir / f"{name}.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.server = self.issue("server", "127.0.0.1", "localhost")

    def issue(self, stem: str, *identities: str, **kwargs: object) -> Pair:
        leaf = self.ca.issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        cert, key = self.dir / f"{self.name}-{stem}.crt", self.dir / f"{self.name}-{stem}.key"
        cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return Pair(str(cert), str(key))

    def expired(self) -> Pair:
        now = datetime.datetime.now(datetime.UTC)
        return self.issue("expired", "127.0.0.1", not_before=now - datetime.timedelta(days=30),
                          not_after=now - datetime.timedelta(days=1))

    def client(self) -> Pair:
        return self.issue("client", "worker-1@example.com")

    def server_env(self, mutual: bool = False, pair: Pair | None = None) -> dict[str, str]:
        pair = pair or self.server
        env = {"SHARDQ_API__TLS_ENABLED": "true", "SHARDQ_API__TLS_CERT_FILE": pair.cert,
               "SHARDQ_API__TLS_KEY_FILE": pair.key}
        if mutual:
            env["SHARDQ_API__TLS_CA_FILE"] = self.ca_file
        return env
