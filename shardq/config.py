"""shardq configuration: seven sections, every key defaulted and validated.

Rules (docs/configuration.md says the same for users):

- Layers, lowest first: built-in defaults < YAML file < environment < overrides (command-line
  flags). A later layer replaces a key's value; nothing is merged inside a value.
- YAML: an empty file or a missing section means defaults. The top level is a mapping of sections;
  an unknown section or key is an error that names it and lists the allowed ones.
- Environment: ``SHARDQ_<SECTION>__<KEY>=value`` (section and key case-insensitive). The value is
  parsed as a YAML scalar ("7071" -> 7071, "true" -> True, "[a, b]" -> a list), except for the
  keys whose value is text (hosts, paths, choices), which take it verbatim. ``SHARDQ_*`` names
  without ``__`` (``SHARDQ_URL``) belong to others and are ignored; an unknown section or key is
  an error naming the variable.
- Overrides: dotted keys (``{"broker.port": 0}``) with values already typed; ``None`` means
  "flag not given" and is skipped.
- Types are strict: a bool is not an int, a float is not an int, "7070" is not an int (only
  ``broker.shards`` takes the text of an int, as its flag does); an int is a fine float.
- Every error is a ConfigError ``<section.key>: <repr(value)> <what is wrong> (allowed: ...)``,
  plus where the value came from; the first error found is the one reported.
- Secrets (``Secret`` checks: the API keys) are never shown, in an error or in ``dump_config``:
  each check's ``show`` masks them as ``'***' (N characters)``, also inside the list or mapping
  that holds them, and a value that may be one (an API key entry that is not a mapping) is masked
  whole.
- The schema is the dataclasses themselves: each field carries its check (``_opt``); the few rules
  that tie two keys together are in ``_CROSS_RULES``.

Pure: reads one file and a mapping of environment; no sockets, no asyncio.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import yaml

from shardq.errors import ConfigError
from shardq.http.origins import Origin  # api.cors_origins: the check lives beside the CORS code
from shardq.protocol.frames import MAX_PAYLOAD

__all__ = [
    "FLAG_TO_KEY", "ApiConfig", "ApiKey", "AuthConfig", "BrokerConfig", "Config", "MonitoringConfig",
    "PersistenceConfig", "RaftConfig", "WorkerConfig", "config_as_dict", "default_data_dir",
    "default_of", "dump_config", "load_config",
]

# What an API key may be granted; the server maps each message to one of them (server/session.py).
PERMISSIONS = ("submit", "claim", "read", "admin")

# Command-line flag -> the dotted key it overrides (shared by every subcommand that loads config).
FLAG_TO_KEY: dict[str, str] = {
    "--host": "broker.host",
    "--port": "broker.port",
    "--data-dir": "persistence.data_dir",
    "--shards": "broker.shards",
    "--sync": "persistence.sync",
    "--lease-timeout-ms": "broker.lease_timeout_ms",
    "--heartbeat-interval-ms": "broker.heartbeat_interval_ms",
    "--queue-depth-threshold": "broker.queue_depth_threshold",
    "--max-connections": "broker.max_connections",
    "--connection-timeout-ms": "broker.connection_timeout_ms",
    "--metrics-port": "monitoring.prometheus_port",
    "--http-port": "api.rest_port",
}


def default_data_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_DATA_HOME/shardq`` when that is set to an absolute path, else ``~/.local/share/shardq``."""
    xdg = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "shardq")


# --- checks: each takes (dotted key, raw value) and returns the value to store, or raises ----------

class Check:
    allowed = ""
    verbatim_env = False  # True: an environment value is taken as text, not parsed as YAML
    secret = False        # True: this value, or part of it, must never be shown

    def __call__(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """The value as an error message shows it: its repr, secrets masked."""
        return _show(value)

    def hide(self, value: Any) -> Any:
        """A valid value as plain data (``config_as_dict``), each secret replaced by ``MASK``."""
        return value

    def fail(self, key: str, value: Any, what: str) -> ConfigError:
        return ConfigError(f"{key}: {self.show(value)} {what} (allowed: {self.allowed})")


def _show(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


MASK = "***"


def _masked(value: Any) -> str:
    """What is shown instead of a secret: no character of it, only its length or type."""
    if isinstance(value, str):
        return f"{MASK!r} ({len(value)} character{'' if len(value) == 1 else 's'})"
    return f"{MASK!r} ({type(value).__name__})"


class Int(Check):
    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def __call__(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, "is not an integer")
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise self.fail(key, value, "is out of range")
        return value


class Float(Check):
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.allowed = f"a number {lo}..{hi}"

    def __call__(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, value, "is not a number")
        if not self.lo <= value <= self.hi:  # also refuses nan
            raise self.fail(key, value, "is out of range")
        return float(value)


class Bool(Check):
    allowed = "true, false"

    def __call__(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, value, "is not a boolean")
        return value


class Text(Check):
    """A string of at least ``min_len`` characters; ``optional``: also null ("" reads as null)."""

    verbatim_env = True

    def __init__(self, min_len: int = 1, optional: bool = False) -> None:
        self.min_len, self.optional = min_len, optional
        what = "a non-empty string" if min_len == 1 else f"a string of at least {min_len} characters"
        self.allowed = what + (" or null" if optional else "")

    def __call__(self, key: str, value: Any) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str):
            raise self.fail(key, value, "is not a string")
        if len(value) < self.min_len:
            raise self.fail(key, value, "is too short")
        return value


class Secret(Text):
    """A Text that is never shown: errors and ``dump_config`` mask it."""

    secret = True

    def show(self, value: Any) -> str:
        return _masked(value)

    def hide(self, value: Any) -> Any:
        return MASK


class Path(Text):
    """A filesystem path; a leading ``~`` is expanded."""

    def __call__(self, key: str, value: Any) -> str | None:
        text = super().__call__(key, value)
        return None if text is None else os.path.expanduser(text)


class Choice(Check):
    """One of a fixed set of words, case-insensitive, stored lowercase."""

    verbatim_env = True

    def __init__(self, *options: str) -> None:
        self.options = options
        self.allowed = ", ".join(options)

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in self.options:
            raise ConfigError(f"{key}: {_show(value)} is not one of {self.allowed}")
        return value.lower()


class Shards(Check):
    """``auto`` (one per core, or what the data dir recorded) or a count 1..1024, also as text."""

    allowed = "'auto' or an integer 1..1024"

    def __call__(self, key: str, value: Any) -> int | str:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            if text.isascii() and text.isdigit():  # "²".isdigit() is True, int("²") fails
                value = int(text)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, "is not a shard count")
        if not 1 <= value <= 1024:
            raise self.fail(key, value, "is out of range")
        return value


class HostPort(Check):
    """``host:port`` (IPv6 hosts in brackets), port 1..65535."""

    allowed = "'host:port' with port 1..65535, IPv6 hosts in brackets"

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, value, "is not a 'host:port' string")
        host, sep, port = value.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if (not sep or not bare or any(c.isspace() or c in "[]" for c in bare)
                or (":" in bare and bare == host) or not (port.isascii() and port.isdigit())
                or not 1 <= int(port) <= 65535):
            raise self.fail(key, value, "is not a valid 'host:port'")
        return value


class ListOf(Check):
    """A list (stored as a tuple) whose items each pass ``item``; errors name ``key[i]``."""

    def __init__(self, item: Check) -> None:
        self.item = item
        self.allowed = f"a list of: {item.allowed}"
        self.secret = item.secret

    def show(self, value: Any) -> str:
        if not self.secret:
            return _show(value)
        if not isinstance(value, list | tuple):
            return _masked(value)
        return "[" + ", ".join(self.item.show(v) for v in value) + "]"

    def hide(self, value: Any) -> Any:
        return [self.item.hide(v) for v in value]

    def __call__(self, key: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise self.fail(key, value, "is not a list")
        return tuple(self.item(f"{key}[{i}]", v) for i, v in enumerate(value))


class Record(Check):
    """A mapping with exactly the fields of ``cls``, each passing its check; builds a ``cls``."""

    def __init__(self, cls: type, checks: dict[str, Check]) -> None:
        self.cls, self.checks = cls, checks
        self.names = ", ".join(checks)
        self.allowed = f"a mapping with {self.names}"
        self.secret = any(check.secret for check in checks.values())

    def show(self, value: Any) -> str:
        if not self.secret:
            return _show(value)
        if isinstance(value, self.cls):
            value = {name: getattr(value, name) for name in self.checks}
        if not isinstance(value, Mapping):
            return _masked(value)  # an entry written as the bare secret, say
        return "{" + ", ".join(
            f"{name!r}: " + (self.checks[name].show(v) if name in self.checks else _masked(v))
            for name, v in value.items()) + "}"

    def hide(self, value: Any) -> Any:
        return {name: check.hide(value[name]) for name, check in self.checks.items()}

    def __call__(self, key: str, value: Any) -> Any:
        if isinstance(value, self.cls):
            value = {name: getattr(value, name) for name in self.checks}
        if not isinstance(value, Mapping):
            raise self.fail(key, value, "is not a mapping")
        for name in value:
            if name not in self.checks:
                raise ConfigError(f"{key}: unknown key {name!r} (allowed: {self.names})")
        for name in self.checks:
            if name not in value:
                raise self.fail(key, dict(value), f"lacks {name!r}")
        return self.cls(**{name: check(f"{key}.{name}", value[name])
                           for name, check in self.checks.items()})


def _opt(default: Any, check: Check, *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field: its default and the check every non-default value must pass."""
    if factory is not None:
        return field(default_factory=factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


PORT = Int(0, 65535)

# --- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = _opt("0.0.0.0", Text())
    port: int = _opt(7070, PORT)                               # 0 = any free port
    shards: int | str = _opt("auto", Shards())
    max_connections: int = _opt(1000, Int(1))
    connection_timeout_ms: int = _opt(30000, Int(100))
    # Per shard, for all its client connections together (docs/configuration.md, session.py).
    output_budget_bytes: int = _opt(128 * 1024 * 1024, Int(1024 * 1024))
    input_budget_bytes: int = _opt(64 * 1024 * 1024, Int(1024 * 1024))
    queue_depth_threshold: int = _opt(100000, Int(1))
    lease_timeout_ms: int = _opt(30000, Int(100))
    heartbeat_interval_ms: int = _opt(15000, Int(50))          # silent for 2x this = dead
    claim_batch: int = _opt(10, Int(1, 1000))
    max_payload_bytes: int = _opt(MAX_PAYLOAD, Int(1, MAX_PAYLOAD))  # at most the protocol's cap
    retry_backoff_base_ms: int = _opt(1000, Int(1))
    retry_backoff_max_ms: int = _opt(3600000, Int(1))          # >= retry_backoff_base_ms
    retry_jitter: float = _opt(0.2, Float(0.0, 1.0))
    default_max_retries: int = _opt(3, Int(0, 1000))
    default_timeout_seconds: int = _opt(300, Int(1, 604800))


@dataclass(frozen=True, slots=True)
class PersistenceConfig:
    data_dir: str = _opt(None, Path(), factory=default_data_dir)
    sync: str = _opt("interval", Choice("always", "interval", "none"))
    wal_sync_interval_ms: int = _opt(100, Int(1))
    enable_wal: bool = _opt(True, Bool())
    compression: str = _opt("lz4", Choice("none", "snappy", "zlib", "bz2", "lz4", "lz4hc", "zstd"))
    compaction_style: str = _opt("level", Choice("level", "universal", "fifo"))
    write_buffer_size: int = _opt(64 * 1024 * 1024, Int(1024 * 1024))
    max_write_buffer_number: int = _opt(3, Int(2))
    level0_file_num_compaction_trigger: int = _opt(4, Int(1))
    periodic_compaction_seconds: int = _opt(86400, Int(0))
    block_cache_size: int = _opt(134217728, Int(1048576))
    completed_retention_s: int = _opt(604800, Int(0))
    compaction_interval_s: int = _opt(3600, Int(1))
    min_free_disk_bytes: int = _opt(64 * 1024 * 1024, Int(0))


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Parsed and validated; replication is a later feature."""

    enabled: bool = _opt(False, Bool())
    node_id: int = _opt(1, Int(1))
    peers: tuple[str, ...] = _opt((), ListOf(HostPort()))
    election_timeout_ms: int = _opt(1000, Int(10))
    heartbeat_interval_ms: int = _opt(300, Int(1))             # < election_timeout_ms
    snapshot_interval_s: int = _opt(300, Int(1))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    rest_host: str = _opt("127.0.0.1", Text())
    rest_port: int = _opt(8080, PORT)
    cors_origins: tuple[str, ...] = _opt((), ListOf(Origin()))  # () = CORS off
    grpc_port: int = _opt(9090, PORT)                          # gRPC is a later feature
    tls_enabled: bool = _opt(False, Bool())
    tls_cert_file: str | None = _opt(None, Path(optional=True))  # required when tls_enabled
    tls_key_file: str | None = _opt(None, Path(optional=True))   # required when tls_enabled
    tls_ca_file: str | None = _opt(None, Path(optional=True))


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    name: str
    permissions: tuple[str, ...]


API_KEY = Record(ApiKey, {"key": Secret(min_len=16), "name": Text(),
                          "permissions": ListOf(Choice(*PERMISSIONS))})


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = _opt(False, Bool())
    keys_file: str | None = _opt(None, Path(optional=True))  # hashed, scoped keys (keys.py)
    api_keys: tuple[ApiKey, ...] = _opt((), ListOf(API_KEY))  # deprecated: keys in clear text
    allow_insecure: bool = _opt(False, Bool())  # keys over plaintext from non-loopback peers


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    prometheus_port: int = _opt(9091, PORT)
    metrics_enabled: bool = _opt(True, Bool())
    log_level: str = _opt("info", Choice("debug", "info", "warning", "error", "critical"))
    json_logs: bool = _opt(False, Bool())


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = _opt(4, Int(1, 4096))
    heartbeat_interval_ms: int = _opt(15000, Int(50))
    shutdown_timeout_s: int = _opt(60, Int(0))
    max_inactivity_s: int = _opt(60, Int(1))
    pool: str = _opt("thread", Choice("thread", "process"))


@dataclass(frozen=True, slots=True)
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    raft: RaftConfig = field(default_factory=RaftConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)


SECTIONS: dict[str, type] = {
    "broker": BrokerConfig, "persistence": PersistenceConfig, "raft": RaftConfig, "api": ApiConfig,
    "auth": AuthConfig, "monitoring": MonitoringConfig, "worker": WorkerConfig,
}
KEYS: dict[str, dict[str, Check]] = {
    name: {f.name: f.metadata["check"] for f in fields(cls)} for name, cls in SECTIONS.items()
}

# Rules that tie keys together, checked once every key is valid on its own:
# (the key reported, does the config satisfy it, what is wrong with the reported value).
_CROSS_RULES: tuple[tuple[str, Callable[[Config], bool], Callable[[Config], str]], ...] = (
    ("broker.retry_backoff_max_ms", lambda c: c.broker.retry_backoff_max_ms >= c.broker.retry_backoff_base_ms,
     lambda c: f"is less than broker.retry_backoff_base_ms (allowed: >= {c.broker.retry_backoff_base_ms})"),
    ("raft.heartbeat_interval_ms", lambda c: c.raft.heartbeat_interval_ms < c.raft.election_timeout_ms,
     lambda c: f"is not below raft.election_timeout_ms (allowed: < {c.raft.election_timeout_ms})"),
    ("api.tls_cert_file", lambda c: not c.api.tls_enabled or bool(c.api.tls_cert_file),
     lambda c: "is missing (allowed: a certificate file path, required when api.tls_enabled)"),
    ("api.tls_key_file", lambda c: not c.api.tls_enabled or bool(c.api.tls_key_file),
     lambda c: "is missing (allowed: a private key file path, required when api.tls_enabled)"),
    ("auth.keys_file", lambda c: not c.auth.enabled or bool(c.auth.api_keys or c.auth.keys_file),
     lambda c: "is missing (allowed: a keys file path, required when auth.enabled: `shardq keys create`)"),
    ("auth.keys_file", lambda c: c.auth.enabled or not c.auth.keys_file,
     lambda c: "is set but auth.enabled is false (allowed: null unless auth.enabled)"),
    ("auth.allow_insecure", lambda c: c.auth.enabled or not c.auth.allow_insecure,
     lambda c: "is set but auth.enabled is false (allowed: false unless auth.enabled)"),
    ("auth.api_keys", lambda c: len({k.key for k in c.auth.api_keys}) == len(c.auth.api_keys),
     lambda c: "holds the same key twice (allowed: distinct keys)"),
)


def default_of(dotted: str) -> Any:
    """The built-in default of a dotted key (``broker.port`` -> 7070), before any file, env or flag."""
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or key not in KEYS[section]:
        raise KeyError(dotted)
    return getattr(SECTIONS[section](), key)


# --- the layers --------------------------------------------------------------------------------

Layers = dict[str, tuple[Any, str]]  # dotted key -> (raw value, where it came from)


def _unknown(what: str, name: Any, allowed: Any) -> str:
    return f"unknown {what} {name!r} (allowed: {', '.join(allowed)})"


def _unknown_key(section: str, key: Any) -> str:
    return f"unknown key {key!r} in section {section!r} (allowed: {', '.join(KEYS[section])})"


def _read_file(path: str | os.PathLike[str], layers: Layers) -> None:
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {where}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"config file {where}: cannot be read ({reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {where}: invalid YAML{at}: {problem}") from None
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {where}: the top level must be a mapping of sections "
                          f"({', '.join(SECTIONS)}), not {type(doc).__name__}")
    for section, body in doc.items():
        if section not in KEYS:
            raise ConfigError(f"config file {where}: {_unknown('section', section, KEYS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            shown = _masked(body) if any(c.secret for c in KEYS[section].values()) else _show(body)
            raise ConfigError(f"config file {where}: section {section!r} must be a mapping of keys, "
                              f"not {shown}")
        for key, value in body.items():
            if key not in KEYS[section]:
                raise ConfigError(f"config file {where}: {_unknown_key(section, key)}")
            layers[f"{section}.{key}"] = (value, f"config file {where}")


def _read_env(env: Mapping[str, str], layers: Layers) -> None:
    for name, text in sorted(env.items()):
        if not name.upper().startswith("SHARDQ_") or "__" not in name:
            continue
        section, _, key = name[len("SHARDQ_"):].lower().partition("__")
        if section not in KEYS:
            raise ConfigError(f"environment variable {name}: {_unknown('section', section, KEYS)}")
        if key not in KEYS[section]:
            raise ConfigError(f"environment variable {name}: {_unknown_key(section, key)}")
        value: Any = text
        if not KEYS[section][key].verbatim_env:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text  # not YAML: let the key's check say what it wanted
        layers[f"{section}.{key}"] = (value, f"environment variable {name}")


_KEY_TO_FLAG = {key: flag for flag, key in FLAG_TO_KEY.items()}


def _read_overrides(overrides: Mapping[str, Any], layers: Layers) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in KEYS:
            raise ConfigError(f"override {dotted!r}: {_unknown('section', section, KEYS)}")
        if key not in KEYS[section]:
            raise ConfigError(f"override {dotted!r}: {_unknown_key(section, key)}")
        flag = _KEY_TO_FLAG.get(dotted)
        layers[dotted] = (value, f"flag {flag}" if flag else f"override {dotted}")


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < the YAML file at ``path`` < ``env`` (None: os.environ) < ``overrides``."""
    env = os.environ if env is None else env
    layers: Layers = {"persistence.data_dir": (default_data_dir(env), "the default")}
    if path is not None:
        _read_file(path, layers)
    _read_env(env, layers)
    _read_overrides(overrides or {}, layers)

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = {}
        for key, check in KEYS[section].items():
            dotted = f"{section}.{key}"
            if dotted in layers:
                raw, origin = layers[dotted]
                try:
                    values[key] = check(dotted, raw)
                except ConfigError as exc:
                    raise ConfigError(f"{exc} [from {origin}]") from None
        sections[section] = cls(**values)
    cfg = Config(**sections)

    for dotted, holds, what in _CROSS_RULES:
        if not holds(cfg):
            section, _, key = dotted.partition(".")
            value = config_as_dict(cfg)[section][key]
            raise ConfigError(f"{dotted}: {KEYS[section][key].show(value)} {what(cfg)}")
    return cfg


# --- output ------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_as_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (dicts, lists, scalars), in schema order; YAML- and JSON-able."""
    return _plain(cfg)


def dump_config(cfg: Config, *, reveal_secrets: bool = False) -> str:
    """YAML text of the config (``shardq config show``), each API key shown as ``'***'``.

    With ``reveal_secrets`` it is text that ``load_config`` reads back into an equal Config.
    Without, it loads back only when there are no API keys: a masked key is too short, so a
    copy of the output can never run with ``'***'`` as a key.
    """
    data = config_as_dict(cfg)
    if not reveal_secrets:
        data = {section: {key: KEYS[section][key].hide(value) for key, value in values.items()}
                for section, values in data.items()}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
