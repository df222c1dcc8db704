"""Handlers for tests/integration/test_taskopts.py, run by a real ``python -m shardq.worker
taskopts_apps:app`` (the test puts this directory on PYTHONPATH)."""

from __future__ import annotations

import shardq
from shardq.worker import TaskContext

app = shardq.App("taskopts")


@app.task("taskopts-parent")
def parent(ctx: TaskContext) -> dict:
    return {"from": ctx.id, "value": ctx.json()["value"]}


@app.task("taskopts-join", dependency_results=True)
def join(ctx: TaskContext) -> dict:
    """Carried by the claim: the sum of the dependencies' values."""
    results = ctx.dependency_results(decode=True)
    return {"sum": sum(r["value"] for r in results.values()), "ids": sorted(results)}


@app.task("taskopts-join-lazy")
def join_lazy(ctx: TaskContext) -> dict:
    """Not asked for at claim time: fetched when the handler asks."""
    results = ctx.dependency_results(decode=True)
    return {"sum": sum(r["value"] for r in results.values()), "ids": sorted(results)}
