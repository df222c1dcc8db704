"""Code quality as tests: lint, and the layering rule that the pure core does no I/O."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The pure core: bytes in / messages out, state changes with a passed-in clock.
PURE_MODULES = ["shardq.protocol.frames", "shardq.protocol.requests", "shardq.engine.engine",
                "shardq.engine.ready", "shardq.engine.leases", "shardq.engine.deps", "shardq.engine.waiters",
                "shardq.engine.states", "shardq.task", "shardq.errors", "shardq.config",
                "shardq.client.core"]
IO_MODULES = {"asyncio", "socket", "rocksdict", "multiprocessing", "uvloop", "selectors",
              "subprocess", "psutil"}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_imports_no_io(module: str) -> None:
    code = (f"import sys; import {module}; "
            f"print(','.join(sorted(m for m in {sorted(IO_MODULES)!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in I/O modules: {out}"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed; it is part of the dev extra")
    result = subprocess.run([ruff, "check", "shardq", "tests"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
