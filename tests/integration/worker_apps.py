"""Task handlers for tests/integration/test_worker.py, run by real ``python -m shardq.worker
worker_apps:app`` processes (the test puts this directory on PYTHONPATH).

Handlers that the tests watch append one line per event to the file named by
$SHARDQ_TEST_MARKS: ``<event> <task id> <attempt> <pid> <unix time>``.
"""

from __future__ import annotations

import asyncio
import os
import time

import shardq
from shardq.worker import TaskContext

app = shardq.App("tests")


def mark(ctx: TaskContext, event: str) -> None:
    path = os.environ.get("SHARDQ_TEST_MARKS")
    if path:
        line = f"{event} {ctx.id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: lines never interleave
        finally:
            os.close(fd)


def _whoami(ctx: TaskContext) -> dict:
    return {"id": ctx.id, "attempt": ctx.attempt, "retry_count": ctx.retry_count,
            "worker_id": ctx.worker_id, "pid": os.getpid()}


@app.task("add")
def add(ctx: TaskContext) -> dict:
    args = ctx.json()
    return {"sum": args["a"] + args["b"], **_whoami(ctx)}


@app.task("async_echo")
async def async_echo(ctx: TaskContext) -> dict:
    await asyncio.sleep(0.01)
    return {"echo": ctx.json(), "type": ctx.type, **_whoami(ctx)}


@app.task("raw")
def raw(ctx: TaskContext) -> bytes:
    return ctx.payload[::-1]


@app.task("boom")
def boom(ctx: TaskContext) -> None:
    mark(ctx, "start")
    raise ValueError(f"boom on attempt {ctx.attempt}")


@app.task("boom_limited", max_retries=1)
def boom_limited(ctx: TaskContext) -> None:
    """Always fails; its decorator allows 1 retry, a default for tasks submitted through it."""
    raise ValueError(f"boom on attempt {ctx.attempt}")


@app.task("give_up")
def give_up(ctx: TaskContext) -> None:
    raise shardq.Fail("this input can never work")


@app.task("retry_once")
def retry_once(ctx: TaskContext) -> dict:
    if ctx.retry_count == 0:
        raise shardq.Retry("not yet")
    return _whoami(ctx)


@app.task("slow_first")
def slow_first(ctx: TaskContext) -> dict:
    """The first attempt sleeps ``seconds`` (payload); later ones return at once."""
    mark(ctx, "start")
    if ctx.attempt == 1:
        time.sleep(ctx.json()["seconds"])
    mark(ctx, "end")
    return _whoami(ctx)


@app.task("gil_hog")
def gil_hog(ctx: TaskContext) -> dict:
    """Hold the GIL, busy on the CPU, for ``seconds`` (payload) in ONE C call: the builtin sum()
    over a range never returns to the eval loop, so no other thread of this interpreter runs."""
    seconds = ctx.json()["seconds"]
    per_item = float("inf")
    for _ in range(3):  # calibrate: the fastest of three short runs
        t = time.perf_counter()
        sum(range(1_000_000))
        per_item = min(per_item, (time.perf_counter() - t) / 1_000_000)
    mark(ctx, "start")
    t = time.perf_counter()
    sum(range(int(seconds / per_item)))
    held = time.perf_counter() - t
    mark(ctx, "end")
    return {"held_s": held, **_whoami(ctx)}


@app.task("hang", timeout=1)
def hang(ctx: TaskContext) -> None:
    mark(ctx, "start")
    time.sleep(30)
    mark(ctx, "end")


@app.task("async_hang", timeout=1)
async def async_hang(ctx: TaskContext) -> None:
    mark(ctx, "start")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        mark(ctx, "cancelled")
        raise
    mark(ctx, "end")


@app.task("quick")
def quick(ctx: TaskContext) -> dict:
    return _whoami(ctx)


@app.task("until_cancelled")
def until_cancelled(ctx: TaskContext) -> str:
    """Loops until the worker cancels the run (test_cancel_control.py): ctx.cancelled turns true."""
    mark(ctx, "start")
    deadline = time.monotonic() + 30
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    mark(ctx, "saw_cancel" if ctx.cancelled else "end")
    return "stopped"


@app.task("hold")
def hold(ctx: TaskContext) -> dict:
    """Runs for ``seconds`` (the payload), then completes."""
    mark(ctx, "start")
    time.sleep(float(ctx.json() or 1.0))
    mark(ctx, "end")
    return _whoami(ctx)
