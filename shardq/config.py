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

from shardq.config_checks import (
    Bool,
    Check,
    Choice,
    Float,
    HostPort,
    Int,
    ListOf,
    Path,
    Record,
    Secret,
    Shards,
    Text,
    _masked,
    _show,
)
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
    "--grpc-port": "api.grpc_port",  # also turns api.grpc_enabled on (cli.py)
}


def default_data_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_DATA_HOME/shardq`` when that is set to an absolute path, else ``~/.local/share/shardq``."""
    xdg = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "shardq")


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
    rest_enabled: bool = _opt(True, Bool())                    # false: no HTTP listener at all
    rest_host: str = _opt("127.0.0.1", Text())
    rest_port: int = _opt(8080, PORT)
    cors_origins: tuple[str, ...] = _opt((), ListOf(Origin()))  # () = CORS off
    grpc_enabled: bool = _opt(False, Bool())                   # the gRPC API (shardq[grpc]; docs/grpc.md)
    grpc_host: str = _opt("127.0.0.1", Text())
    grpc_port: int = _opt(9090, PORT)                          # 0 = any free port
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
    ("api.grpc_port", lambda c: c.api.grpc_enabled or c.api.grpc_port == 9090,
     lambda c: "does nothing while api.grpc_enabled is false (allowed: 9090 unless api.grpc_enabled)"),
    ("api.grpc_host", lambda c: c.api.grpc_enabled or c.api.grpc_host == "127.0.0.1",
     lambda c: "does nothing while api.grpc_enabled is false (allowed: '127.0.0.1' unless api.grpc_enabled)"),
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
    _refuse_what_is_not_built(cfg)
    return cfg


# Keys of the original design that nothing reads yet. Their defaults are harmless (the shipped
# config.yaml lists them), but a value set to anything else would be silently ignored: refused.
NOT_BUILT = {
    "raft": "replication is not built yet",
    "broker.claim_batch": "nothing reads it: workers claim their free slots plus a prefetch "
                          "(shardq worker --prefetch)",
}


def _refuse_what_is_not_built(cfg: Config) -> None:
    for name, why in NOT_BUILT.items():
        section, _, only = name.partition(".")
        for key in KEYS[section]:
            if only and key != only:
                continue
            value, default = getattr(getattr(cfg, section), key), default_of(f"{section}.{key}")
            if value != default:
                raise ConfigError(f"{section}.{key}: {KEYS[section][key].show(value)} does nothing: {why}; "
                                  f"remove it or leave it at {KEYS[section][key].show(default)}")


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
