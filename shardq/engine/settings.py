"""The settings of one shard's engine: plain values, given once when the engine is built
(server/shard.py builds them from the config); importable from engine.py too."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EngineSettings:
    shard: int = 0
    shards: int = 1
    lease_ms: int = 30_000
    heartbeat_ms: int = 15_000
    depth_threshold: int = 100_000
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 3_600_000
    jitter: float = 0.2
    default_priority: int = 100
    default_max_retries: int = 3
    default_timeout_seconds: int = 300
    retention_ms: int = 7 * 24 * 3600 * 1000
    dead_retention_ms: int = 30 * 24 * 3600 * 1000  # dead letters (engine/insight.py); 0: kept
    # False in the multi-process broker: a shard hears only some of a worker's
    # messages, so the coordinator declares workers dead (``worker_liveness``).
    worker_liveness: bool = True
    # The wire's budgets, which the protocol layer owns (protocol/frames.py): the largest
    # frame an answer may fill (a CLAIM answer carries fewer tasks rather than exceed it), and
    # the largest payload or result (a bigger result is TooLarge). No defaults: the engine has
    # no opinion on them; whoever builds the settings passes the protocol's (or a config's).
    max_frame: int = field(kw_only=True)
    max_payload: int = field(kw_only=True)
