"""shardq: a sharded, durable task-queue broker.

``shardq.Client``, ``shardq.AsyncClient``, ``shardq.App`` and friends are imported on first
use, so that importing the pure core (``shardq.task``, ``shardq.engine``) pulls in no I/O.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "shardq.client.sync", "Job": "shardq.client.models",
    "TaskInfo": "shardq.client.models", "TaskFailed": "shardq.client.models",
    "TaskCancelled": "shardq.client.models", "WaitTimeout": "shardq.client.models",
    "AsyncClient": "shardq.client.aio", "App": "shardq.worker.app",
    "Retry": "shardq.worker.app", "Fail": "shardq.worker.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardq' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)


__all__ = ["__version__", *_LAZY]
