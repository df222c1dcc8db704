"""The worker runtime: define handlers with ``shardq.App``, run them with ``shardq worker``.

``App``, ``TaskContext``, ``Retry`` and ``Fail`` live in ``shardq.worker.app`` (no I/O); the run
loop is ``shardq.worker.runtime.WorkerRuntime`` (with ``connecting``, ``cycle`` and ``shutdown``
mixed in), with its parts in ``outcome`` (a run and how it ended), ``pool`` (where sync handlers
run), ``heartbeat`` and ``reports`` (RESULTs and their log lines); the command line is ``shardq.worker.cli``. docs/worker.md is the guide.
"""

from shardq.worker.app import App, Fail, Retry, TaskContext, TaskDef, load_app

__all__ = ["App", "Fail", "Retry", "TaskContext", "TaskDef", "load_app"]
