"""What the docs show a server, a worker or a command print is what they really print.

Rules: a fenced block right after ``<!-- checked-output: KIND -->`` in a page of ``PAGES`` is
checked against a real run of that page's walk-through (a real `shardq serve`, the page's own
``tasks.py`` under a real `shardq worker`, the page's own commands), in page order. KIND is

- ``serve``: every line is a line the server printed (stdout or stderr, in any order);
- ``worker``: every line is a line the worker printed so far;
- ``transcript``: ``$ shardq …`` lines are run; the lines after each are its whole output.

A shown line is a pattern (``line_pattern``), so that what differs from run to run may differ:
``…`` stands for anything (a time, or a whole line when alone), every number for any number
(ports, pids, counts, sizes, addresses), ``3m``/``2s`` for any duration, a path for any path, a run
of 2+ spaces for any run of spaces (table columns), and a UUID for the id the run really printed in
its place (the first time; after that it is that id, also in the commands). The worker's id and
host are the page's (``laptop-…``) once the real ones are swapped in. Everything else is literal.
Read commands are retried for a while, until the worker has caught up with what the page shows.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "getting-started.md"]
MARKER = re.compile(r"^<!-- checked-output: (\w+) -->\n```\w*\n(.*?)^```$", re.M | re.S)
KINDS = ("serve", "worker", "transcript")
READS = ("status", "stats", "workers", "list", "dlq list")  # retried; the others run once
SHARDS = 4       # the page's server: one shard per core on a 4-core laptop
PATIENCE_S = 30  # how long a read command or a log line may take to show what the page shows

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TOKEN = re.compile(rf"(?P<any>…)|(?P<uuid>{UUID})|(?P<path>(?<!\S)~?/[^\s,]*)"
                   r"|(?P<duration>\b\d+[smhd]\b)|(?P<number>\d+(?:\.\d+)*)|(?P<spaces>  +)")
PATTERNS = {"any": ".*", "path": r"\S+", "duration": r"\d+[smhd](?: \d+[smhd])?",
            "number": r"\d+(?:\.\d+)*", "spaces": " +"}


def line_pattern(line: str, ids: dict[str, str]) -> re.Pattern[str]:
    """The regex a shown line stands for; a UUID not in ``ids`` (page id -> real id) is captured
    in a group named after it (``u`` + its hex), to be added to ``ids`` once the block matched."""
    out, pos, seen = [], 0, set()
    for m in TOKEN.finditer(line):
        out.append(re.escape(line[pos:m.start()]))
        kind, text = m.lastgroup, m[0]
        if kind == "uuid":
            name = "u" + text.replace("-", "")
            if text in ids:
                out.append(re.escape(ids[text]))
            elif name in seen:
                out.append(f"(?P={name})")
            else:
                out.append(f"(?P<{name}>{UUID})")
                seen.add(name)
        else:
            out.append(PATTERNS[kind])
        pos = m.end()
    out.append(re.escape(line[pos:]))
    return re.compile("".join(out))


def bind(match: re.Match[str], ids: dict[str, str]) -> None:
    for name, real in match.groupdict().items():
        page_id = "-".join((name[1:9], name[9:13], name[13:17], name[17:21], name[21:]))
        ids[page_id] = real


def blocks(page: Path) -> list[tuple[str, list[str]]]:
    text = page.read_text()
    found = [(m[1], m[2].splitlines()) for m in MARKER.finditer(text)]
    assert len(found) == text.count("<!-- checked-output:"), f"{page.name}: a marker not before a fence"
    assert {kind for kind, _ in found} <= set(KINDS), found
    return found


# --- the matching rules themselves ---------------------------------------------------------------

@pytest.mark.parametrize(("shown", "real", "matches"), [
    ("READY port=7070 metrics_port=9091", "READY port=40117 metrics_port=33871", True),
    ("READY port=7070", "READY port=40117 metrics_port=33871", False),
    ("… INFO server shardq.serve: serving on 0.0.0.0:7070 with 4 shard(s), data dir /h/q, sync=interval",
     "2026-12-05 11:24:51,716 INFO supervisor shardq.supervisor: serving on 127.0.0.1:45211 with 2 "
     "shard(s), data dir /tmp/x, sync=interval", False),
    ("… INFO supervisor shardq.supervisor: serving on 0.0.0.0:7070 with 4 shard(s), data dir /h/q, sync=interval",
     "2026-12-05 11:24:51,716 INFO supervisor shardq.supervisor: serving on 127.0.0.1:45211 with 2 "
     "shard(s), data dir /tmp/x, sync=interval", True),
    ("pending        0", "pending        12", True),
    ("pending        0", "in_progress    0", False),
    ("workers: 1   connections: 2   uptime: 3m", "workers: 0   connections: 1   uptime: 1h 2m", True),
    ("5d2c9a70-1f0e-4b8e-a6a3-3c1d2e4f5a6b  pending", "963a8141-24d4-41bf-922f-90209c7d3bf9  pending", True),
])
def test_line_pattern(shown: str, real: str, matches: bool) -> None:
    assert bool(line_pattern(shown, {}).fullmatch(real)) is matches


def test_a_uuid_is_bound_to_the_real_one() -> None:
    page_id, real_id = "0b7f6c1e-2a44-4a37-9d5b-6f0c1e9a8d21", "963a8141-24d4-41bf-922f-90209c7d3bf9"
    ids: dict[str, str] = {}
    m = line_pattern(page_id, ids).fullmatch(real_id)
    assert m is not None
    bind(m, ids)
    assert ids == {page_id: real_id}
    assert line_pattern(f"task {page_id}", ids).fullmatch(f"task {real_id}")
    assert not line_pattern(f"task {page_id}", ids).fullmatch("task 00000000-24d4-41bf-922f-90209c7d3bf9")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_has_checked_blocks_of_every_kind(page: Path) -> None:
    assert {kind for kind, _ in blocks(page)} == set(KINDS)


# --- the walk-through ----------------------------------------------------------------------------

@dataclass
class Process:
    """A process whose stdout and stderr lines are collected as they come."""

    proc: subprocess.Popen[str]
    lines: list[str]

    @classmethod
    def start(cls, cmd: list[str], cwd: Path, env: dict[str, str]) -> Process:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        lines: list[str] = []
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=lambda s=stream: lines.extend(line.rstrip("\n") for line in s),
                             daemon=True).start()
        return cls(proc, lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def eventually(check: Callable[[], str | None], what: str) -> None:
    """Call ``check`` until it returns None (done) or PATIENCE_S passed (fail with its last word)."""
    deadline = time.monotonic() + PATIENCE_S
    while (problem := check()) is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {problem}")
        time.sleep(0.3)


def shown_lines_were_printed(shown: list[str], printed: Callable[[], list[str]],
                             ids: dict[str, str], swap: Callable[[str], str]) -> Callable[[], str | None]:
    def check() -> str | None:
        real = [swap(line) for line in printed()]
        for line in shown:
            if line == "…":
                continue
            pattern = line_pattern(line, ids)
            match = next((m for r in real if (m := pattern.fullmatch(r))), None)
            if match is None:
                return f"nothing printed matches the shown line\n  {line}\nprinted:\n  " + "\n  ".join(real)
            bind(match, ids)
        return None
    return check


def transcript(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(command, its output lines) for each ``$ `` line; blank lines before the next one are layout."""
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            assert out, f"output before any command: {line!r}"
            out[-1][1].append(line)
    for _, output in out:
        while output and not output[-1].strip():
            output.pop()
    return out


def test_getting_started_walk_through(server_factory, tmp_path) -> None:
    page = ROOT / "docs" / "getting-started.md"
    text = page.read_text()
    tasks_py = text.split("Save this as `tasks.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tasks.py").write_text(tasks_py)

    srv = server_factory("--shards", str(SHARDS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDQ_")}
    env.update(SHARDQ_URL=srv.url, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")  # a terminal shows print() at once; a pipe would hold it back
    # The page's `shardq worker tasks:app`, heartbeating every second: the page's `shardq workers`
    # shows CPU and memory, which come with the first heartbeat (15 s by default).
    worker = Process.start([sys.executable, "-m", "shardq", "worker", "tasks:app",
                            "--heartbeat-interval-ms", "1000"], cwd=tmp_path, env=env)
    try:
        ids: dict[str, str] = {}
        page_worker = re.search(r"worker ((\w+)-\d+-[0-9a-f]{6}) ready", text)
        assert page_worker is not None, "the page shows the worker's ready line"
        host = socket.gethostname()

        def swap(line: str) -> str:
            """The real worker id and host written as the page's."""
            real = re.search(rf"worker ({re.escape(host)}-\d+-[0-9a-f]{{6}}) ready", "\n".join(worker.lines))
            if real:
                line = line.replace(real[1], page_worker[1])
            return re.sub(rf"(?<!\S){re.escape(host)}(?!\S)", page_worker[2], line)

        for n, (kind, shown) in enumerate(blocks(page)):
            where = f"{page.name}, checked block {n + 1} ({kind})"
            if kind == "serve":
                eventually(shown_lines_were_printed(
                    shown, lambda: [line.rstrip("\n") for line in srv.stdout_lines + srv.stderr_lines],
                    ids, swap), where)
            elif kind == "worker":
                eventually(shown_lines_were_printed(shown, lambda: list(worker.lines), ids, swap), where)
            else:
                for command, output in transcript(shown):
                    run_command(command, output, ids, env, swap, where)
    finally:
        worker.kill()


def run_command(command: str, output: list[str], ids: dict[str, str], env: dict[str, str],
                swap: Callable[[str], str], where: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "shardq", f"{where}: only shardq commands are run: {command}"
    argv = [ids.get(arg, arg) for arg in argv[1:]]
    retry = " ".join(argv[:2]) in READS or argv[0] in READS
    last: list[str] = []

    def check() -> str | None:
        nonlocal last
        proc = subprocess.run([sys.executable, "-m", "shardq", *argv], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=30)
        last = [swap(line) for line in (proc.stdout + proc.stderr).splitlines()]
        matches = [line_pattern(s, ids).fullmatch(r) for s, r in zip(output, last)]
        if len(last) == len(output) and all(matches):
            for m in matches:
                bind(m, ids)  # type: ignore[arg-type]
            return None
        return ("$ " + command + "\nshown:\n  " + "\n  ".join(output)
                + "\nprinted:\n  " + "\n  ".join(last))

    if retry:
        eventually(check, where)
    elif (problem := check()) is not None:
        pytest.fail(f"{where}: {problem}")
