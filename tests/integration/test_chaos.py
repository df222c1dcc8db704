"""A short run of loadtests/chaos.py: random SIGKILLs of shards, the acceptor and the
coordinator under producer and worker load, with every batch split across shards into
(dependency, dependent) pairs; every acknowledged task must complete, no dependent before its
dependency, and no more handlers run at once than the type's broker-wide concurrency cap."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_of_random_children_under_load_loses_no_acknowledged_task() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "loadtests" / "chaos.py"), "--seconds", "12",
                           "--seed", "3", "--settle", "90", "--deps", "--max-concurrency", "8"],
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    killed = int(re.search(r"killed (\d+) processes", out).group(1))
    acked = int(re.search(r"acknowledged tasks: ([\d,]+)", out).group(1).replace(",", ""))
    assert killed >= 2 and acked > 1000, out
    assert "missing from the broker: 0; not completed after settling: 0" in out
    assert "acknowledged but never run: 0" in out
    assert "dependents that ran before their dependency: 0" in out
    peak = int(re.search(r"concurrency cap 8: at most (\d+) handlers ran at once", out).group(1))
    assert peak <= 8, out
