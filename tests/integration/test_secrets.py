"""No secret is ever echoed: not by `shardq config check|show`, not by `shardq serve`'s logs.

Each run gets an API key that is too short (a config error) or a good one, from a config file or
from the environment, and everything the process prints, stdout and stderr, is searched for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = "sh0rt-s3cret"                      # 12 characters: too short for an API key
GOOD = "g00d-s3cret-0123456789abcdef"       # long enough


def key_yaml(key: str) -> str:
    return ("auth:\n  enabled: true\n  api_keys:\n"
            f"    - key: \"{key}\"\n      name: producer\n      permissions: [submit, read]\n")


def key_env(key: str) -> dict[str, str]:
    return {"SHARDQ_AUTH__ENABLED": "true",
            "SHARDQ_AUTH__API_KEYS": f"[{{key: \"{key}\", name: producer, permissions: [submit]}}]"}


def shardq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDQ_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "shardq", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=60)


@pytest.fixture(params=["file", "env"])
def given_by(request, tmp_path):
    """(args, env) that give the server the key: a config file or the environment."""
    def make(key: str) -> tuple[list[str], dict[str, str]]:
        if request.param == "env":
            return [], key_env(key)
        path = tmp_path / "auth.yaml"
        path.write_text(key_yaml(key))
        return ["--config", str(path)], {}
    return make


@pytest.mark.parametrize("action", ["check", "show"])
def test_config_commands_never_print_the_key(given_by, action, tmp_path) -> None:
    for key, code in ((SHORT, 2), (GOOD, 0)):
        args, env = given_by(key)
        run = shardq("config", action, *args, "--data-dir", str(tmp_path / "d"), env=env)
        out = run.stdout + run.stderr
        assert run.returncode == code, out
        assert key not in out, out
        if code == 2:
            assert out.startswith("shardq: config error: auth.api_keys[0].key: '***' (12 characters) "
                                  "is too short"), out
    assert "key: '***'" in run.stdout or action == "check"


def test_serve_with_a_short_key_names_it_without_showing_it(given_by, tmp_path) -> None:
    args, env = given_by(SHORT)
    run = shardq("serve", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "d"),
                 *args, env=env)
    assert run.returncode == 2
    assert "auth.api_keys[0].key: '***' (12 characters) is too short" in run.stderr
    assert SHORT not in run.stdout + run.stderr


def test_serve_never_logs_the_key(server_factory, given_by) -> None:
    """Start, refuse a wrong key, accept the right one, drain: nothing printed holds either."""
    args, env = given_by(GOOD)
    env = {**env, "SHARDQ_MONITORING__LOG_LEVEL": "debug"}
    srv = server_factory("--shards", "2", *args, env=env)
    wrong = "wr0ng-s3cret-0123456789abcdef"
    refused = shardq("stats", "--server", srv.url, "--api-key", wrong)
    assert refused.returncode == 1 and "Unauthorized" in refused.stderr, refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    accepted = shardq("submit", "t", "--server", srv.url, "--api-key", GOOD)
    assert accepted.returncode == 0, accepted.stderr
    time.sleep(0.5)  # the last startup lines of the other processes
    assert srv.stop() == 0
    time.sleep(0.2)  # the pumps read to the end
    printed = "".join(srv.stdout_lines + srv.stderr_lines)
    assert "serving on" in printed  # what was searched is the real log
    for secret in (GOOD, wrong):
        assert secret not in printed
