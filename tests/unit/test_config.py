"""shardq.config: defaults, the three layers above them, every error path, and docs kept in sync."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shardq.config import (
    FLAG_TO_KEY,
    KEYS,
    ApiKey,
    Config,
    config_as_dict,
    default_data_dir,
    dump_config,
    load_config,
)
from shardq.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ALL_KEYS = [f"{section}.{key}" for section, keys in KEYS.items() for key in keys]
GOOD_KEY = "0123456789abcdef-secret"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def get(cfg: Config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def nested(dotted: str, value) -> dict:
    section, key = dotted.split(".")
    return {section: {key: value}}


# --- defaults ----------------------------------------------------------------------------------

def test_defaults():
    cfg = load_config(env={})
    assert cfg == Config(persistence=dataclasses.replace(Config().persistence,
                                                         data_dir=default_data_dir({})))
    assert cfg.broker.host == "0.0.0.0"
    assert cfg.broker.port == 7070
    assert cfg.broker.shards == "auto"
    assert cfg.broker.max_payload_bytes == 10 * 1024 * 1024
    assert cfg.broker.retry_jitter == 0.2
    assert cfg.persistence.sync == "interval"
    assert cfg.persistence.compression == "lz4"
    assert cfg.persistence.completed_retention_s == 7 * 24 * 3600
    assert cfg.raft.peers == ()
    assert cfg.api.tls_cert_file is None
    assert cfg.auth.api_keys == ()
    assert cfg.monitoring.log_level == "info"
    assert cfg.worker.pool == "thread"


def test_every_default_passes_its_own_check():
    cfg = Config()
    for dotted in ALL_KEYS:
        section, key = dotted.split(".")
        assert KEYS[section][key](dotted, get(cfg, dotted)) == get(cfg, dotted), dotted


def test_default_data_dir(tmp_path):
    home = os.path.expanduser("~")
    assert default_data_dir({}) == os.path.join(home, ".local", "share", "shardq")
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path)}) == str(tmp_path / "shardq")
    assert default_data_dir({"XDG_DATA_HOME": "relative/dir"}) == default_data_dir({})
    assert default_data_dir({"XDG_DATA_HOME": ""}) == default_data_dir({})
    cfg = load_config(env={"XDG_DATA_HOME": str(tmp_path)})
    assert cfg.persistence.data_dir == str(tmp_path / "shardq")


def test_config_is_frozen():
    cfg = load_config(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.broker.port = 1  # type: ignore[misc]


# --- the layers --------------------------------------------------------------------------------

def test_yaml_overrides_defaults(tmp_path):
    p = write(tmp_path, """
broker:
  port: 7071
  shards: 4
  retry_jitter: 0
persistence:
  sync: ALWAYS
  data_dir: ~/q
monitoring:
  log_level: DEBUG
api:
  cors_origins: ["https://a.example", "http://[::1]:7100"]
""")
    cfg = load_config(p, env={})
    assert cfg.broker.port == 7071
    assert cfg.broker.shards == 4
    assert cfg.broker.retry_jitter == 0.0 and isinstance(cfg.broker.retry_jitter, float)
    assert cfg.persistence.sync == "always"
    assert cfg.persistence.data_dir == os.path.expanduser("~/q")
    assert cfg.monitoring.log_level == "debug"
    assert cfg.api.cors_origins == ("https://a.example", "http://[::1]:7100")
    assert cfg.broker.host == "0.0.0.0"  # untouched keys keep their defaults


@pytest.mark.parametrize("text", ["", "# only a comment\n", "broker:\n", "broker: {}\nworker:\n"])
def test_empty_file_and_sections_mean_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text), env={}) == load_config(env={})


def test_env_overrides():
    env = {
        "SHARDQ_BROKER__PORT": "7071",
        "shardq_persistence__SYNC": "always",
        "SHARDQ_Monitoring__Json_Logs": "true",
        "SHARDQ_BROKER__SHARDS": "2",
        "SHARDQ_BROKER__RETRY_JITTER": "0.5",
        "SHARDQ_API__REST_HOST": "1234",      # text keys take the text verbatim
        "SHARDQ_API__TLS_CA_FILE": "",        # empty optional path = null
        "SHARDQ_URL": "tcp://elsewhere:1",    # no "__": not configuration
        "SHARDQ_": "x",
        "PATH": "/bin",
    }
    cfg = load_config(env=env)
    assert cfg.broker.port == 7071
    assert cfg.persistence.sync == "always"
    assert cfg.monitoring.json_logs is True
    assert cfg.broker.shards == 2
    assert cfg.broker.retry_jitter == 0.5
    assert cfg.api.rest_host == "1234"
    assert cfg.api.tls_ca_file is None


def test_env_value_that_is_not_yaml_reaches_the_check():
    with pytest.raises(ConfigError, match=r"raft\.peers: '\[a:1, b' is not a list"):
        load_config(env={"SHARDQ_RAFT__PEERS": "[a:1, b"})


def test_overrides_beat_env_beat_file(tmp_path):
    p = write(tmp_path, "broker:\n  port: 1\n  host: filehost\n  max_connections: 5\n")
    env = {"SHARDQ_BROKER__PORT": "2", "SHARDQ_BROKER__HOST": "envhost"}
    cfg = load_config(p, env=env, overrides={"broker.port": 3, "broker.host": None})
    assert cfg.broker.port == 3                 # flag
    assert cfg.broker.host == "envhost"         # env (the flag was not given: None)
    assert cfg.broker.max_connections == 5      # file
    assert cfg.broker.lease_timeout_ms == 30000  # default


def test_every_flag_names_a_key():
    assert set(FLAG_TO_KEY.values()) <= set(ALL_KEYS)
    assert FLAG_TO_KEY["--port"] == "broker.port"
    assert FLAG_TO_KEY["--http-port"] == "api.rest_port"
    assert FLAG_TO_KEY["--metrics-port"] == "monitoring.prometheus_port"
    assert FLAG_TO_KEY["--grpc-port"] == "api.grpc_port"
    assert len(FLAG_TO_KEY) == 13


def test_env_uses_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SHARDQ_BROKER__PORT", "7079")
    assert load_config().broker.port == 7079


# --- single-key errors -------------------------------------------------------------------------

# (dotted key, a bad value): every key appears at least once (test_bad_table_covers_every_key).
BAD = [
    ("broker.host", ""), ("broker.host", 5), ("broker.host", None),
    ("broker.port", 70000), ("broker.port", -1), ("broker.port", "7070"), ("broker.port", True),
    ("broker.port", 7070.0),
    ("broker.shards", 0), ("broker.shards", 1025), ("broker.shards", "four"),
    ("broker.shards", True), ("broker.shards", 2.0), ("broker.shards", "-1"), ("broker.shards", None),
    ("broker.max_connections", 0),
    ("broker.connection_timeout_ms", 99),
    ("broker.output_budget_bytes", 1048575),
    ("broker.input_budget_bytes", 0),
    ("broker.queue_depth_threshold", 0),
    ("broker.lease_timeout_ms", 10), ("broker.lease_timeout_ms", "30s"),
    ("broker.heartbeat_interval_ms", 49),
    ("broker.claim_batch", 0), ("broker.claim_batch", 1001),
    ("broker.max_payload_bytes", 0), ("broker.max_payload_bytes", 10485761),
    ("broker.retry_backoff_base_ms", 0),
    ("broker.retry_backoff_max_ms", 0),
    ("broker.retry_jitter", 1.5), ("broker.retry_jitter", -0.1), ("broker.retry_jitter", "0.2"),
    ("broker.retry_jitter", False), ("broker.retry_jitter", float("nan")),
    ("broker.default_max_retries", -1), ("broker.default_max_retries", 1001),
    ("broker.default_timeout_seconds", 0), ("broker.default_timeout_seconds", 604801),
    ("persistence.data_dir", ""), ("persistence.data_dir", 7), ("persistence.data_dir", None),
    ("persistence.sync", "sometimes"), ("persistence.sync", False),
    ("persistence.wal_sync_interval_ms", 0),
    ("persistence.enable_wal", "yes"), ("persistence.enable_wal", 1),
    ("persistence.compression", "gzip"),
    ("persistence.compaction_style", "tiered"),
    ("persistence.write_buffer_size", 1048575),
    ("persistence.max_write_buffer_number", 1),
    ("persistence.level0_file_num_compaction_trigger", 0),
    ("persistence.periodic_compaction_seconds", -1),
    ("persistence.block_cache_size", 1024),
    ("persistence.completed_retention_s", -1),
    ("persistence.compaction_interval_s", 0),
    ("persistence.min_free_disk_bytes", -1),
    ("raft.enabled", "true"),
    ("raft.node_id", 0),
    ("raft.peers", "a:1"), ("raft.peers", ["a"]), ("raft.peers", ["a:0"]), ("raft.peers", ["a:x"]),
    ("raft.peers", [":1"]), ("raft.peers", ["::1:7"]), ("raft.peers", ["a:70000"]), ("raft.peers", [5]),
    ("raft.election_timeout_ms", 9),
    ("raft.heartbeat_interval_ms", 0),
    ("raft.snapshot_interval_s", 0),
    ("api.rest_host", ""),
    ("api.cors_origins", "https://a.example"), ("api.cors_origins", ["https://a.example/path"]),
    ("api.cors_origins", ["a.example"]), ("api.cors_origins", [3]),
    ("api.rest_port", 65536),
    ("api.grpc_port", -5), ("api.grpc_enabled", "yes"), ("api.grpc_host", ""),
    ("api.tls_enabled", "on"),
    ("api.rest_enabled", "no"), ("api.rest_enabled", 1),
    ("api.tls_cert_file", 3),
    ("api.tls_key_file", ["k.pem"]),
    ("api.tls_ca_file", False),
    ("auth.enabled", None),
    ("auth.api_keys", "k"), ("auth.api_keys", [{"key": "short", "name": "n", "permissions": []}]),
    ("auth.api_keys", [{"key": GOOD_KEY, "name": "n", "permissions": ["write"]}]),
    ("auth.api_keys", [{"key": GOOD_KEY, "name": "", "permissions": []}]),
    ("auth.api_keys", [{"key": GOOD_KEY, "name": "n", "permissions": "admin"}]),
    ("auth.api_keys", [{"key": GOOD_KEY, "name": "n"}]),
    ("auth.api_keys", ["k"]),
    ("auth.keys_file", 7), ("auth.allow_insecure", "yes"),
    ("monitoring.prometheus_port", 100000),
    ("monitoring.metrics_enabled", 0),
    ("monitoring.log_level", "verbose"), ("monitoring.log_level", 10),
    ("monitoring.json_logs", "false"),
    ("worker.concurrency", 0), ("worker.concurrency", 4097),
    ("worker.heartbeat_interval_ms", 1),
    ("worker.shutdown_timeout_s", -1),
    ("worker.max_inactivity_s", 0),
    ("worker.pool", "fiber"),
]


def _bad_id(case):
    return f"{case[0]}={case[1]!r}"


def test_bad_table_covers_every_key():
    assert {key for key, _ in BAD} == set(ALL_KEYS)


def _secrets_in(value) -> list[str]:
    """The API keys in a bad auth.api_keys value: every "key", and every entry that is not a mapping."""
    items = value if isinstance(value, list) else [value]
    return [item.get("key") if isinstance(item, dict) else item for item in items]


def _assert_names(exc: ConfigError, dotted: str, value) -> None:
    msg = str(exc)
    assert dotted in msg
    if dotted == "auth.api_keys":  # the key is named; an API key is never shown
        if isinstance(value, list) and isinstance(value[0], dict):
            assert "auth.api_keys[0]" in msg
        for secret in _secrets_in(value):
            assert repr(secret) not in msg and (len(secret) < 8 or secret not in msg), msg
    elif isinstance(value, list) and len(value) == 1 and not isinstance(value[0], dict):
        assert repr(value[0]) in msg  # a list item is named as key[0] with the item's value
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        assert "auth.api_keys[0]" in msg
    elif isinstance(value, float) and math.isnan(value):
        assert "nan" in msg
    else:
        assert repr(value) in msg
    assert "allowed" in msg or "is not one of" in msg


@pytest.mark.parametrize("case", BAD, ids=_bad_id)
def test_bad_value_in_yaml_names_key_and_value(tmp_path, case):
    dotted, value = case
    p = write(tmp_path, yaml.safe_dump(nested(dotted, value)))
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    _assert_names(err.value, dotted, value)
    assert f"[from config file {p}]" in str(err.value)


@pytest.mark.parametrize("case", [c for c in BAD if c[1] is not None], ids=_bad_id)
def test_bad_value_as_override_names_key_and_value(case):
    dotted, value = case
    with pytest.raises(ConfigError) as err:
        load_config(env={}, overrides={dotted: value})
    _assert_names(err.value, dotted, value)


def test_error_messages_read_well():
    def msg(**kw) -> str:
        with pytest.raises(ConfigError) as err:
            load_config(env={}, overrides=kw["o"]) if "o" in kw else load_config(env=kw["e"])
        return str(err.value)

    assert msg(o={"broker.port": 70000}) == (
        "broker.port: 70000 is out of range (allowed: 0..65535) [from flag --port]")
    assert msg(o={"persistence.sync": "sometimes"}) == (
        "persistence.sync: 'sometimes' is not one of always, interval, none [from flag --sync]")
    assert msg(e={"SHARDQ_BROKER__PORT": "x"}) == (
        "broker.port: 'x' is not an integer (allowed: 0..65535) "
        "[from environment variable SHARDQ_BROKER__PORT]")
    assert msg(o={"worker.pool": "fiber"}) == (
        "worker.pool: 'fiber' is not one of thread, process [from override worker.pool]")
    assert "raft.peers[1]: 'b' is not a valid 'host:port'" in msg(o={"raft.peers": ["a:1", "b"]})
    assert "auth.api_keys[0].permissions[1]: 'write' is not one of submit, claim, read, admin" in msg(
        o={"auth.api_keys": [{"key": GOOD_KEY, "name": "n", "permissions": ["read", "write"]}]})
    assert "auth.api_keys[0].key: '***' (5 characters) is too short (allowed: a string of at least 16" in msg(
        o={"auth.api_keys": [{"key": "short", "name": "n", "permissions": []}]})


# --- unknown names -----------------------------------------------------------------------------

def test_unknown_key_in_yaml(tmp_path):
    p = write(tmp_path, "broker:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'prot' in section 'broker' "
                                          r"\(allowed: host, port, shards, ") as err:
        load_config(p, env={})
    assert str(p) in str(err.value)


def test_unknown_section_in_yaml(tmp_path):
    p = write(tmp_path, "brokr:\n  port: 1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'brokr' \(allowed: broker, persistence, "
                                          r"raft, api, auth, monitoring, worker\)"):
        load_config(p, env={})


@pytest.mark.parametrize("name, fragment", [
    ("SHARDQ_BROKER__PROT", "unknown key 'prot' in section 'broker'"),
    ("SHARDQ_BROKR__PORT", "unknown section 'brokr'"),
    ("SHARDQ_BROKER__PORT__X", "unknown key 'port__x'"),
])
def test_unknown_env_names_the_variable(name, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(env={name: "1"})
    assert f"environment variable {name}" in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize("dotted", ["broker.prot", "brokr.port", "port"])
def test_unknown_override(dotted):
    with pytest.raises(ConfigError, match="unknown"):
        load_config(env={}, overrides={dotted: 1})


def test_unknown_field_in_api_key():
    with pytest.raises(ConfigError, match=r"auth\.api_keys\[0\]: unknown key 'role' "
                                          r"\(allowed: key, name, permissions\)"):
        load_config(env={}, overrides={"auth.api_keys": [
            {"key": GOOD_KEY, "name": "n", "permissions": [], "role": "x"}]})


# --- the file itself ---------------------------------------------------------------------------

def test_bad_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "broker:\n  port: 7070\n  host: a: b\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3, column \d+") as err:
        load_config(p, env={})
    assert str(p) in str(err.value)


def test_unclosed_bracket_names_line(tmp_path):
    p = write(tmp_path, "raft:\n  peers: [a:1,\n\nworker:\n  pool: thread\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(p, env={})


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"{re.escape(str(p))}: not found"):
        load_config(p, env={})


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))}: cannot be read"):
        load_config(tmp_path, env={})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, "broker: {}\n")
    p.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(p, env={})


def test_not_utf8(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"broker:\n  host: \xff\xfe\n")
    with pytest.raises(ConfigError, match=re.escape(str(p))):
        load_config(p, env={})


@pytest.mark.parametrize("text, fragment", [
    ("- broker\n", "top level must be a mapping"),
    ("just text\n", "top level must be a mapping"),
    ("broker: 7\n", "section 'broker' must be a mapping"),
    ("broker: [port]\n", "section 'broker' must be a mapping"),
])
def test_wrong_shapes(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), env={})


# --- shards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), ("AUTO", "auto"), (1, 1), (1024, 1024), (4, 4), ("4", 4), ("16", 16),
])
def test_shards_accepted(value, expected):
    assert load_config(env={}, overrides={"broker.shards": value}).broker.shards == expected


def test_shards_from_env():
    assert load_config(env={"SHARDQ_BROKER__SHARDS": "8"}).broker.shards == 8
    assert load_config(env={"SHARDQ_BROKER__SHARDS": "auto"}).broker.shards == "auto"


@pytest.mark.parametrize("value", [0, 1025, "0", "many", "", True, 3.5, None, [2]])
def test_shards_refused(tmp_path, value):
    p = write(tmp_path, yaml.safe_dump({"broker": {"shards": value}}))
    with pytest.raises(ConfigError, match=r"broker\.shards: .*'auto' or an integer 1\.\.1024"):
        load_config(p, env={})


# --- rules across keys -------------------------------------------------------------------------

def test_backoff_max_below_base():
    with pytest.raises(ConfigError, match=r"broker\.retry_backoff_max_ms: 500 is less than "
                                          r"broker\.retry_backoff_base_ms \(allowed: >= 1000\)"):
        load_config(env={}, overrides={"broker.retry_backoff_max_ms": 500})
    cfg = load_config(env={}, overrides={"broker.retry_backoff_max_ms": 1000})
    assert cfg.broker.retry_backoff_max_ms == 1000


@pytest.mark.parametrize("key, value, why", [
    ("raft.enabled", True, "replication is not built yet"),
    ("raft.peers", ["a:1"], "replication is not built yet"),
    ("broker.claim_batch", 50, "nothing reads it"),
])
def test_settings_that_do_nothing_are_refused(key, value, why):
    """Keys of the original design that nothing reads yet: valid values are refused with a
    message, never silently ignored; their defaults (the shipped config.yaml) load."""
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .* does nothing: {why}"):
        load_config(env={}, overrides={key: value})
    assert load_config(ROOT / "config.yaml", env={}) == load_config(env={})


def test_grpc_keys_do_nothing_unless_grpc_is_enabled():
    """api.grpc_port and api.grpc_host are refused while api.grpc_enabled is false; --grpc-port
    turns it on (cli.py)."""
    for key, value in (("api.grpc_port", 9091), ("api.grpc_host", "0.0.0.0")):
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .* does nothing while api\.grpc_enabled is false"):
            load_config(env={}, overrides={key: value})
    cfg = load_config(env={}, overrides={"api.grpc_enabled": True, "api.grpc_port": 0, "api.grpc_host": "::"})
    assert (cfg.api.grpc_enabled, cfg.api.grpc_port, cfg.api.grpc_host) == (True, 0, "::")
    assert load_config(env={}).api.grpc_enabled is False


def test_raft_heartbeat_not_below_election_timeout():
    with pytest.raises(ConfigError, match=r"raft\.heartbeat_interval_ms: 1000 is not below "
                                          r"raft\.election_timeout_ms \(allowed: < 1000\)"):
        load_config(env={}, overrides={"raft.heartbeat_interval_ms": 1000})
    with pytest.raises(ConfigError, match=r"raft\.heartbeat_interval_ms: 999 does nothing"):
        load_config(env={}, overrides={"raft.heartbeat_interval_ms": 999})  # valid, but not built


@pytest.mark.parametrize("missing", ["api.tls_cert_file", "api.tls_key_file"])
def test_tls_files_required_when_enabled(missing):
    files = {"api.tls_cert_file": "cert.pem", "api.tls_key_file": "key.pem"}
    del files[missing]
    with pytest.raises(ConfigError, match=rf"{re.escape(missing)}: None is missing .*api\.tls_enabled"):
        load_config(env={}, overrides={"api.tls_enabled": True, **files})


def test_tls_enabled_with_files():
    cfg = load_config(env={"SHARDQ_API__TLS_ENABLED": "true", "SHARDQ_API__TLS_CERT_FILE": "c.pem",
                           "SHARDQ_API__TLS_KEY_FILE": "~/k.pem"})
    assert cfg.api.tls_enabled and cfg.api.tls_cert_file == "c.pem"
    assert cfg.api.tls_key_file == os.path.expanduser("~/k.pem")


def test_empty_tls_file_counts_as_missing():
    with pytest.raises(ConfigError, match=r"api\.tls_cert_file: None is missing"):
        load_config(env={"SHARDQ_API__TLS_ENABLED": "true", "SHARDQ_API__TLS_CERT_FILE": "",
                         "SHARDQ_API__TLS_KEY_FILE": "k.pem"})


def test_auth_needs_a_key():
    with pytest.raises(ConfigError, match=r"auth\.keys_file: None is missing .*required when auth\.enabled"):
        load_config(env={}, overrides={"auth.enabled": True})


def test_auth_settings_that_would_do_nothing_are_refused():
    with pytest.raises(ConfigError, match=r"auth\.keys_file: '/k.yaml' is set but auth\.enabled is false"):
        load_config(env={}, overrides={"auth.keys_file": "/k.yaml"})
    with pytest.raises(ConfigError, match=r"auth\.allow_insecure: True is set but auth\.enabled is false"):
        load_config(env={}, overrides={"auth.allow_insecure": True})
    cfg = load_config(env={}, overrides={"auth.enabled": True, "auth.keys_file": "/k.yaml",
                                         "auth.allow_insecure": True})
    assert cfg.auth.keys_file == "/k.yaml" and cfg.auth.allow_insecure and cfg.auth.api_keys == ()


def test_auth_keys(tmp_path):
    p = write(tmp_path, f"""
auth:
  enabled: true
  api_keys:
    - key: "{GOOD_KEY}"
      name: producer
      permissions: [submit, READ]
    - key: "{GOOD_KEY}-2"
      name: admin
      permissions: [admin]
""")
    cfg = load_config(p, env={})
    assert cfg.auth.api_keys == (ApiKey(GOOD_KEY, "producer", ("submit", "read")),
                                 ApiKey(GOOD_KEY + "-2", "admin", ("admin",)))


def test_auth_keys_must_differ():
    same = {"key": GOOD_KEY, "name": "n", "permissions": []}
    with pytest.raises(ConfigError, match=r"auth\.api_keys: .* holds the same key twice"):
        load_config(env={}, overrides={"auth.api_keys": [same, {**same, "name": "m"}]})


def test_api_key_objects_are_accepted_as_overrides():
    key = ApiKey(GOOD_KEY, "n", ("claim",))
    assert load_config(env={}, overrides={"auth.api_keys": [key]}).auth.api_keys == (key,)


# --- output ------------------------------------------------------------------------------------

def _busy_config(tmp_path) -> Config:
    return load_config(env={"SHARDQ_API__CORS_ORIGINS": "['https://a.example', '*']"}, overrides={
        "broker.shards": "3", "broker.port": 0, "broker.retry_jitter": 0,
        "persistence.data_dir": str(tmp_path / "data"), "persistence.sync": "none",
        "api.tls_enabled": True, "api.tls_cert_file": "c.pem", "api.tls_key_file": "k.pem",
        "auth.enabled": True,
        "auth.api_keys": [{"key": GOOD_KEY, "name": "n", "permissions": ["submit", "claim"]}],
        "monitoring.log_level": "WARNING", "api.rest_host": "yes",
    })


@pytest.mark.parametrize("which", ["defaults", "busy"])
def test_dump_round_trips(tmp_path, which):
    cfg = load_config(env={}) if which == "defaults" else _busy_config(tmp_path)
    p = write(tmp_path, dump_config(cfg, reveal_secrets=True), "dumped.yaml")
    assert load_config(p, env={}) == cfg


def test_dump_masks_the_api_keys_and_does_not_load_back(tmp_path):
    cfg = _busy_config(tmp_path)
    text = dump_config(cfg)
    assert GOOD_KEY not in text
    assert yaml.safe_load(text)["auth"]["api_keys"] == [
        {"key": "***", "name": "n", "permissions": ["submit", "claim"]}]
    with pytest.raises(ConfigError, match=r"auth\.api_keys\[0\]\.key: '\*\*\*' \(3 characters\) is too short"):
        load_config(write(tmp_path, text, "shown.yaml"), env={})
    defaults = load_config(env={})
    assert dump_config(defaults) == dump_config(defaults, reveal_secrets=True)


@pytest.mark.parametrize("bad", [
    {"auth.api_keys": [{"key": GOOD_KEY, "name": "n", "permissions": []}] * 2},  # twice
    {"auth.api_keys": [{"key": GOOD_KEY, "name": "n"}]},                         # lacks a field
    {"auth.api_keys": [{"key": GOOD_KEY, "name": "n", "permissions": [], "role": "x"}]},
    {"auth.api_keys": [GOOD_KEY]},                                               # not a mapping
    {"auth.api_keys": GOOD_KEY},                                                 # not a list
    {"auth.api_keys": [{"key": [GOOD_KEY], "name": "n", "permissions": []}]},    # not a string
])
def test_no_error_shows_an_api_key(bad):
    with pytest.raises(ConfigError) as err:
        load_config(env={}, overrides=bad)
    assert GOOD_KEY not in str(err.value) and "auth.api_keys" in str(err.value)


def test_a_section_that_holds_secrets_is_masked_when_malformed(tmp_path):
    p = write(tmp_path, f"auth:\n  - key: {GOOD_KEY}\n")
    with pytest.raises(ConfigError, match="section 'auth' must be a mapping") as err:
        load_config(p, env={})
    assert GOOD_KEY not in str(err.value)


def test_config_as_dict_is_plain(tmp_path):
    d = config_as_dict(_busy_config(tmp_path))
    assert list(d) == list(KEYS)
    assert d["api"]["cors_origins"] == ["https://a.example", "*"]
    assert d["auth"]["api_keys"] == [{"key": GOOD_KEY, "name": "n", "permissions": ["submit", "claim"]}]
    assert json.loads(json.dumps(d)) == d


# --- hypothesis: any environment text gives a Config or a ConfigError, nothing else -------------

@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(ALL_KEYS), text=st.text(max_size=40))
def test_any_env_text_is_handled(key, text):
    section, name = key.split(".")
    try:
        load_config(env={f"SHARDQ_{section.upper()}__{name.upper()}": text})
    except ConfigError as exc:
        assert key in str(exc)


# --- config.yaml and docs/configuration.md stay in sync with the schema --------------------------

def test_config_yaml_is_the_defaults():
    assert load_config(ROOT / "config.yaml", env={}) == load_config(env={})


def _yaml_keys(text: str) -> set[str]:
    """Section.key for every key line of config.yaml, commented-out ones (data_dir) included."""
    found, section = set(), None
    for line in text.splitlines():
        if m := re.match(r"([a-z_]+):", line):
            section = m.group(1)
        elif section and (m := re.match(r"  (?:# ?)?([a-z_0-9]+):", line)):
            found.add(f"{section}.{m.group(1)}")
    return found


def test_config_yaml_documents_every_key():
    text = (ROOT / "config.yaml").read_text()
    assert _yaml_keys(text) == set(ALL_KEYS)
    documented = yaml.safe_load(text)
    for dotted in ALL_KEYS:
        section, key = dotted.split(".")
        if dotted != "persistence.data_dir":
            assert key in documented[section], dotted
    for line in text.splitlines():  # each key line carries its one-line comment
        if re.match(r"  (# ?)?[a-z_0-9]+:", line):
            assert "#" in line.split(":", 1)[1], line


def _doc_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {}
    for line in text.splitlines():
        if m := re.match(r"\|\s*`([a-z_]+\.[a-z_0-9]+)`\s*\|", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 5:  # key | type | default | allowed | meaning
                rows[m.group(1)] = cells
    return rows


def test_docs_list_every_key_with_its_default():
    rows = _doc_rows()
    assert set(rows) == set(ALL_KEYS)
    defaults = config_as_dict(Config())
    for dotted, (_, typ, default, allowed, meaning) in rows.items():
        assert typ and allowed and meaning, dotted
        if dotted == "persistence.data_dir":
            assert "XDG_DATA_HOME" in default and "~/.local/share/shardq" in default
            continue
        section, key = dotted.split(".")
        assert yaml.safe_load(default.strip("`")) == defaults[section][key], dotted


def test_docs_list_every_flag():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for flag, key in FLAG_TO_KEY.items():
        assert re.search(rf"\| `{flag}` \| `{re.escape(key)}`", text), flag
