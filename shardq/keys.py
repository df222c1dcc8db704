"""API keys stored like passwords: the keys file, its records, and checking a secret.

Rules (docs/security.md says the same for users):
1. A secret is ``sq_<id>_<43 characters>``: the key's id (12 hex digits) and 32 random bytes,
   URL-safe base64. It is shown once, when it is made, and never stored: the file holds its
   SHA-256. A secret with 256 random bits cannot be guessed or brute-forced from its hash, so a
   slow password hash (bcrypt, argon2) would buy nothing and cost every HELLO milliseconds.
2. Checking a secret is one dict lookup by the id it carries, then ``hmac.compare_digest`` of
   the hashes. Secrets without the ``sq_`` form (keys imported from ``auth.api_keys``) are looked
   up by their hash instead.
3. The file is YAML (JSON is YAML too): ``version: 1`` and a list ``keys`` of records. It is
   written whole to a temp file in the same directory, fsynced, made 0600 and renamed over the
   old one, under a lock file, so a reader sees the old file or the new one, never a mix.
4. An error names the file, the entry (index, id and line) and the field; never a value that
   might be a secret.
5. A record's ``permissions`` maps each permission to task-type patterns (patterns.py).

Pure apart from reading and writing that one file: no sockets, no asyncio.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from shardq.errors import ShardqError
from shardq.patterns import PatternError, TypePatterns

PERMISSIONS = ("submit", "claim", "read", "admin")
SECRET_PREFIX = "sq_"
ID_HEX = 12  # 48 bits: an id names a key, it guards nothing
SECRET_BYTES = 32  # 256 bits of the OS's randomness
FILE_VERSION = 1
# Why a HELLO was refused: the label values of tq_auth_failures_total.
FAILURE_REASONS = ("missing", "unknown_key", "bad_secret", "disabled", "expired", "insecure_channel")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")  # ID_HEX digits
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_FIELDS = ("id", "name", "hash", "permissions", "expires", "disabled", "created", "grace")


class KeysFileError(ShardqError):
    """The keys file cannot be read, or an entry in it breaks a rule."""


def hash_secret(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The id a ``sq_<id>_...`` secret carries, or None."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    kid, sep, rest = secret[len(SECRET_PREFIX):].partition("_")
    return kid if sep and rest and _ID_RE.match(kid) else None


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> int:
    """ISO 8601 text (a date, or a time; UTC when no zone is given), or a YAML timestamp -> ms."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date or time") from None
    elif hasattr(value, "isoformat") and hasattr(value, "year"):  # a YAML date
        when = datetime(value.year, value.month, value.day)
    else:
        raise ValueError(f"{type(value).__name__} is not an ISO 8601 date or time")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key: who it is (``id``, ``name``), what it may do, and the hash of its secret."""

    id: str
    name: str
    hash: str
    permissions: tuple[tuple[str, TypePatterns], ...]  # (permission, patterns), in PERMISSIONS order
    expires_ms: int | None = None
    disabled: bool = False
    created_ms: int | None = None
    grace: tuple[tuple[str, int], ...] = ()  # (hash, until_ms): old secrets after a rotation
    legacy: bool = field(default=False, compare=False)  # from auth.api_keys in config.yaml

    def scopes(self) -> dict[str, TypePatterns]:
        return dict(self.permissions)

    def hash_ok(self, h: str, now: int) -> bool:
        """``h`` is this key's hash, or an old one still in its grace period."""
        ok = hmac.compare_digest(self.hash, h)
        for old, until in self.grace:
            ok |= hmac.compare_digest(old, h) and now < until
        return ok

    def state(self, now: int) -> str:
        if self.disabled:
            return "disabled"
        if self.expires_ms is not None and now >= self.expires_ms:
            return "expired"
        return "active"

    def to_plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "hash": self.hash,
                               "permissions": {p: list(t.patterns) for p, t in self.permissions},
                               "expires": iso(self.expires_ms), "disabled": self.disabled,
                               "created": iso(self.created_ms)}
        if self.grace:
            out["grace"] = [{"hash": h, "until": iso(u)} for h, u in self.grace]
        return out


@dataclass(slots=True)
class Verdict:
    """The outcome of checking a secret: the key, or why not (a FAILURE_REASONS value)."""

    record: KeyRecord | None
    reason: str = ""
    key_id: str = "unknown"  # for logs: the id the secret named, when it named one
    hash: str = ""


class KeyRing:
    """The keys a server accepts, indexed by id and by hash (rule 2)."""

    def __init__(self, records: list[KeyRecord]) -> None:
        self.records = records
        self.by_id = {r.id: r for r in records}
        self.by_hash = {r.hash: r for r in records}

    def verify(self, secret: object, now: int) -> Verdict:
        if type(secret) is not str or not secret:
            return Verdict(None, "missing")
        h = hash_secret(secret)
        kid = key_id_of(secret)
        rec = self.by_id.get(kid) if kid is not None else None
        if rec is None:
            rec = self.by_hash.get(h)
            if rec is None:
                return Verdict(None, "unknown_key", kid or "unknown")
        elif not rec.hash_ok(h, now):
            return Verdict(None, "bad_secret", rec.id)
        state = rec.state(now)
        if state != "active":
            return Verdict(None, state, rec.id)
        return Verdict(rec, "", rec.id, h)

    def still_valid(self, key_id: str, h: str, now: int) -> str:
        """"" while a connection authenticated as ``key_id`` with hash ``h`` may go on; else why not."""
        rec = self.by_id.get(key_id)
        if rec is None:
            return "revoked"
        if not rec.hash_ok(h, now):
            return "rotated"
        state = rec.state(now)
        return "" if state == "active" else state


# -- making keys -------------------------------------------------------------------------------

def new_secret(key_id: str | None = None) -> tuple[str, str]:
    """(id, secret) for a new key, or a new secret for ``key_id``."""
    kid = key_id or secrets.token_hex(ID_HEX // 2)
    return kid, f"{SECRET_PREFIX}{kid}_{secrets.token_urlsafe(SECRET_BYTES)}"


def make_scopes(permissions: list[str], types: list[str] | None) -> tuple[tuple[str, TypePatterns], ...]:
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown or not permissions:
        raise ValueError(f"permissions {unknown or permissions!r}: allowed are {', '.join(PERMISSIONS)}")
    pats = TypePatterns(types or [">"])
    return tuple((p, pats) for p in PERMISSIONS if p in permissions)


# -- the file ------------------------------------------------------------------------------------

class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that notes the line of each mapping (``__line__``) for error messages."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def read_keys(path: str) -> list[KeyRecord]:
    """The records of the keys file at ``path``; KeysFileError (rule 4) when it is not valid.
    A file that does not exist yet holds no keys (``shardq keys create`` makes it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise KeysFileError(f"keys file {path}: not found (create it with `shardq keys create`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeysFileError(f"keys file {path}: cannot be read ({reason})") from None
    return parse_keys(text, path)


def parse_keys(text: str, path: str = "<keys>") -> list[KeyRecord]:
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KeysFileError(f"keys file {path}: invalid YAML{at}: "
                            f"{getattr(exc, 'problem', None) or 'syntax error'}") from None
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise KeysFileError(f"keys file {path}: the top level must be a mapping with version and keys")
    for name in doc:
        if name not in ("version", "keys", "__line__"):
            raise KeysFileError(f"keys file {path}: unknown top-level key {name!r} (allowed: version, keys)")
    if doc.get("version", FILE_VERSION) != FILE_VERSION:
        raise KeysFileError(f"keys file {path}: version {doc.get('version')!r} is not supported "
                            f"(allowed: {FILE_VERSION})")
    entries = doc.get("keys") or []
    if not isinstance(entries, list):
        raise KeysFileError(f"keys file {path}: keys must be a list of key entries")
    out: list[KeyRecord] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        rec = _record(path, i, entry)
        if rec.id in seen:
            raise KeysFileError(f"keys file {path}: keys[{i}] (id {rec.id}): the same id as keys[{seen[rec.id]}]")
        seen[rec.id] = i
        out.append(rec)
    return out


def _record(path: str, i: int, entry: Any) -> KeyRecord:
    if not isinstance(entry, dict):
        raise KeysFileError(f"keys file {path}: keys[{i}]: must be a mapping of "
                            f"{', '.join(_FIELDS)} (not {type(entry).__name__})")
    line = entry.pop("__line__", "?")
    kid = entry.get("id")
    where = f"keys file {path}: keys[{i}] (id {kid if isinstance(kid, str) and _ID_RE.match(kid) else '?'}, " \
            f"line {line})"

    def bad(key: str, what: str) -> KeysFileError:
        return KeysFileError(f"{where}: {key}: {what}")

    for name in entry:
        if name not in _FIELDS:
            raise bad(str(name), f"unknown field (allowed: {', '.join(_FIELDS)})")
    for name in ("id", "name", "hash", "permissions"):
        if name not in entry:
            raise bad(name, "is missing")
    if not isinstance(kid, str) or not _ID_RE.match(kid):
        raise bad("id", f"must be {ID_HEX} lowercase hex digits")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise bad("name", "must be a non-empty string of at most 200 characters")
    if not isinstance(entry["hash"], str) or not _HASH_RE.match(entry["hash"]):
        raise bad("hash", "must be 'sha256:' and 64 lowercase hex digits (the hash, never the secret)")
    perms = entry["permissions"]
    if not isinstance(perms, dict) or not perms:
        raise bad("permissions", f"must map permissions ({', '.join(PERMISSIONS)}) to lists of "
                                 "task-type patterns ('>' for every type)")
    scopes = []
    for perm, pats in perms.items():
        if perm == "__line__":
            continue
        if perm not in PERMISSIONS:
            raise bad(f"permissions.{perm}", f"unknown permission (allowed: {', '.join(PERMISSIONS)})")
        if isinstance(pats, str):
            pats = [pats]
        if not isinstance(pats, list):
            raise bad(f"permissions.{perm}", "must be a list of task-type patterns")
        try:
            scopes.append((perm, TypePatterns(pats)))
        except PatternError as exc:
            raise bad(f"permissions.{perm}", str(exc)) from None
    scopes.sort(key=lambda s: PERMISSIONS.index(s[0]))
    times: dict[str, int | None] = {}
    for key in ("expires", "created"):
        value = entry.get(key)
        try:
            times[key] = None if value is None else parse_time(value)
        except ValueError as exc:
            raise bad(key, str(exc)) from None
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise bad("disabled", "must be true or false")
    grace = []
    for j, g in enumerate(entry.get("grace") or []):
        if not isinstance(g, dict) or not _HASH_RE.match(str(g.get("hash", ""))) or g.get("until") is None:
            raise bad(f"grace[{j}]", "must be a mapping of hash ('sha256:...') and until (an ISO time)")
        try:
            grace.append((str(g["hash"]), parse_time(g["until"])))
        except ValueError as exc:
            raise bad(f"grace[{j}].until", str(exc)) from None
    return KeyRecord(kid, name, entry["hash"], tuple(scopes), times["expires"], disabled,
                     times["created"], tuple(grace))


HEADER = ("# shardq API keys, managed with `shardq keys` (docs/security.md).\n"
          "# Secrets are not stored here, only their SHA-256; edits are picked up by the server\n"
          "# within a second, or at once on SIGHUP.\n")


def write_keys(path: str, records: list[KeyRecord]) -> None:
    """Replace the file at ``path`` atomically (rule 3); the caller holds ``locked(path)``."""
    text = HEADER + yaml.safe_dump({"version": FILE_VERSION, "keys": [r.to_plain() for r in records]},
                                   sort_keys=False, default_flow_style=False)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".keys-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` so that two `shardq keys` commands never lose each other's change."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def legacy_records(api_keys: Any) -> list[KeyRecord]:
    """The deprecated ``auth.api_keys`` of config.yaml as records: every type for each permission."""
    out = []
    for i, k in enumerate(api_keys):
        h = hash_secret(k.key)
        scopes = make_scopes(list(k.permissions), None) if k.permissions else ()
        out.append(KeyRecord(f"config{i}", k.name, h, scopes, legacy=True))
    return out


def describe(rec: KeyRecord, now: int) -> dict[str, Any]:
    """What `shardq keys list` shows of a record: never its hash."""
    return {"id": rec.id, "name": rec.name, "state": rec.state(now),
            "permissions": {p: list(t.patterns) for p, t in rec.permissions},
            "expires": iso(rec.expires_ms), "created": iso(rec.created_ms),
            "grace_until": iso(max((u for _, u in rec.grace if u > now), default=None))}


__all__ = ["FAILURE_REASONS", "KeyRecord", "KeyRing", "KeysFileError", "PERMISSIONS", "Verdict",
           "describe", "hash_secret", "key_id_of", "legacy_records", "locked", "make_scopes",
           "new_secret", "parse_keys", "parse_time", "read_keys", "write_keys"]
