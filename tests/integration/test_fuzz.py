"""A seeded fuzz run on every CI run: a few thousand random and mutated frames against a real
2-shard server (loadtests/fuzz.py; its long run of 10^6 frames is in docs/benchmarks.md).

Every frame must be answered with ACK or a NACK naming what was wrong (never Internal, never
silence), framing errors must close only their own connection, and the server must come out
of it with the same processes, answering a fresh PING.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("shardq_fuzz", ROOT / "loadtests" / "fuzz.py")
assert spec is not None and spec.loader is not None
fuzz = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fuzz  # its dataclasses look their module up
spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("seed", [11, 12])
def test_fuzzed_frames_are_each_answered_and_crash_nothing(server_factory, seed: int) -> None:
    srv = server_factory("--shards", "2")
    pids = fuzz.server_pids(srv.pid)
    tally = fuzz.fuzz(srv.host, srv.port, frames=3000, connections=3, seed=seed, seconds=90)
    assert tally.frames == 3000
    bad = {code: tally.answers[code] for code in ("Internal", "TIMEOUT", "CLOSED-WITHOUT-ANSWER",
                                                    "CONNECTION-ERROR")}
    assert not any(bad.values()), (bad, tally.failures)
    # The mix reached the server's every layer: accepted requests, field errors, framing errors.
    assert tally.answers["ACK"] > 100 and tally.answers["BadRequest"] > 100 and tally.answers["Protocol"] > 10
    assert set(fuzz.server_pids(srv.pid)) == set(pids), "a server process died or was replaced"
    assert fuzz.ping(srv.host, srv.port)
    assert not [line for line in srv.stderr_lines if "Traceback" in line]
