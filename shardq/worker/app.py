"""The worker's user-facing API: ``App``, ``@app.task``, ``TaskContext``, ``Retry``, ``Fail``.

One convention for every handler, sync or async::

    app = shardq.App()

    @app.task("send_email", max_retries=5, timeout=30)
    def send_email(ctx: TaskContext) -> dict:
        msg = ctx.json()                 # the payload decoded as JSON (ctx.payload is the raw bytes)
        ...
        return {"sent": True}            # the result: bytes, str, or anything JSON-able (None = empty)

``shardq worker module:app`` runs it (docs/worker.md). Nothing here does I/O, so importing an
app module costs nothing beyond the app's own imports.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from shardq.client.models import Job

if TYPE_CHECKING:
    from shardq.worker.dep_context import DependencyResults

__all__ = ["App", "Fail", "Retry", "TaskContext", "TaskDef", "load_app"]


class Retry(Exception):
    """Raise in a handler to fail this attempt and have it tried again.

    It counts against the task's ``max_retries`` like any failure, and the broker's backoff
    (``broker.retry_backoff_base_ms`` · 2^retry_count, ±jitter) decides when; once the retries
    are used up the task goes to ``dead_letter``."""


class Fail(Exception):
    """Raise in a handler to fail the task for good: it goes to ``dead_letter`` now, with no
    further retries, whatever ``max_retries`` says."""


class TaskContext:
    """What a handler gets: the task it runs.

    ``id``, ``type``; ``attempt`` (counts claims, 1 on the first run: the lease's fencing token);
    ``retry_count`` (failures retried so far, 0 on the first run); ``max_retries``;
    ``timeout_seconds`` (the task's, as submitted); ``priority``; ``payload`` (bytes);
    ``worker_id``. ``cancelled`` turns true when the worker gave up on this run (the task was
    cancelled by CANCEL, timeout, lost lease, shutdown): a thread-pool handler that loops can
    check it and return early, or sleep with ``wait_cancelled(seconds)``, which returns as soon
    as the run is cancelled. (Async handlers are cancelled with ``asyncio`` cancellation, and a
    process-pool handler's process is killed: they need neither.)
    """

    __slots__ = ("id", "type", "attempt", "retry_count", "max_retries", "timeout_seconds",
                 "priority", "payload", "worker_id", "_cancelled", "_deps", "_event")

    def __init__(self, id: str, type: str, attempt: int, retry_count: int, max_retries: int,
                 timeout_seconds: int, priority: int, payload: bytes, worker_id: str) -> None:
        self.id = id
        self.type = type
        self.attempt = attempt
        self.retry_count = retry_count
        self.max_retries = max_retries
        self.timeout_seconds = timeout_seconds
        self.priority = priority
        self.payload = payload
        self.worker_id = worker_id
        self._cancelled = False
        self._deps: DependencyResults | None = None  # set by the worker for a task with dependencies
        self._event: threading.Event | None = None  # made by the first wait_cancelled only

    def dependency_results(self, decode: bool = False) -> dict[str, Any]:
        """{dependency id: its result} for every task this one depends on (in ``depends_on``
        order): bytes, or with ``decode`` the JSON value (bytes when it is not JSON). Results the
        claim did not carry are fetched now, in one request (it blocks: worker/dep_context.py);
        a dependency whose result is gone (retention) maps to None."""
        return {} if self._deps is None else self._deps.results(decode)

    def json(self) -> Any:
        """The payload decoded as JSON (an empty payload is None)."""
        return orjson.loads(self.payload) if self.payload else None

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, or until the run is cancelled; whether it is."""
        event = self._event
        if event is None:
            event = self._event = threading.Event()
        if self._cancelled:  # set before the event existed (see cancel)
            event.set()
        return event.wait(timeout)

    def cancel(self) -> None:
        """The worker gave up on this run: ``cancelled`` turns true, ``wait_cancelled`` returns."""
        self._cancelled = True
        event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return (f"TaskContext(id={self.id!r}, type={self.type!r}, attempt={self.attempt}, "
                f"retry_count={self.retry_count}, payload={len(self.payload)} bytes)")


class TaskDef:
    """A registered handler. Calling it calls the handler (handy in unit tests)."""

    def __init__(self, name: str, fn: Callable[[TaskContext], Any], max_retries: int | None,
                 timeout: float | None, dependency_results: bool = False) -> None:
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"task {name!r}: max_retries must be >= 0, got {max_retries}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"task {name!r}: timeout must be > 0 seconds, got {timeout}")
        self.name = name
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.max_retries = max_retries
        self.timeout = timeout
        self.dependency_results = dependency_results  # claims carry its dependencies' results
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__

    def __call__(self, ctx: TaskContext) -> Any:
        return self.fn(ctx)

    def job(self, payload: Any = b"", **options: Any) -> Job:
        """A ``Job`` of this type for ``Client.submit_many``, with the decorator's ``max_retries``
        and ``timeout`` (rounded up to whole seconds) stamped on it unless ``options`` give them:
        they become the task's stored numbers, which the worker goes by."""
        if self.max_retries is not None:
            options.setdefault("max_retries", self.max_retries)
        if self.timeout is not None:
            options.setdefault("timeout", max(1, math.ceil(self.timeout)))
        return Job(self.name, payload, **options)

    def submit(self, client: Any, payload: Any = b"", **options: Any) -> str:
        """Submit one task of this type through ``client`` (a ``shardq.Client``); returns its id."""
        return client.submit_many([self.job(payload, **options)])[0]

    def __repr__(self) -> str:
        kind = "async" if self.is_async else "sync"
        return f"<shardq task {self.name!r} ({kind} {getattr(self.fn, '__qualname__', self.fn)})>"


class App:
    """A registry of task handlers, by task type."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.handlers: dict[str, TaskDef] = {}

    def task(self, name: str | Callable[..., Any] | None = None, *, max_retries: int | None = None,
             timeout: float | None = None, dependency_results: bool = False) -> Any:
        """Register a handler: ``@app.task``, ``@app.task("type")`` or ``@app.task(name=...)``.

        ``name``: the task type (default: the function's name). ``max_retries`` and ``timeout``
        (seconds, rounded up to whole ones) are stamped on the tasks submitted through the
        handler (``.job()`` / ``.submit()``). At run time the claimed task's own stored
        ``max_retries`` and ``timeout_seconds`` decide, not these: the broker retries and times
        out tasks, so a task submitted plainly keeps the numbers it was submitted with.
        ``dependency_results``: the worker's claims carry the results of the tasks this one
        depends on, for ``ctx.dependency_results()`` (worker/dep_context.py)."""
        if callable(name):  # bare @app.task
            return self._register(name.__name__, name, max_retries, timeout)

        def decorate(fn: Callable[[TaskContext], Any]) -> TaskDef:
            return self._register(name or fn.__name__, fn, max_retries, timeout, dependency_results)
        return decorate

    def _register(self, name: str, fn: Callable[[TaskContext], Any], max_retries: int | None,
                  timeout: float | None, dependency_results: bool = False) -> TaskDef:
        if not isinstance(name, str) or not name or len(name.encode()) > 255:
            raise ValueError(f"task type must be a non-empty string of at most 255 bytes, got {name!r}")
        if name in self.handlers:
            raise ValueError(f"task type {name!r} is registered twice "
                             f"({self.handlers[name]!r} and {fn!r})")
        td = TaskDef(name, fn, max_retries, timeout, dependency_results)
        self.handlers[name] = td
        return td

    def __repr__(self) -> str:
        return f"<shardq.App {self.name or ''} tasks={sorted(self.handlers)}>"


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (``module`` alone means ``module:app``), as
    ``shardq worker`` does. The current directory is importable, as with ``python -m``."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"{spec!r} is not an app spec (module:app)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f"cannot import {module_name!r}: {exc}") from None
        raise
    obj: Any = module
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr or 'app'!r}") from None
    if not isinstance(obj, App):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a shardq.App")
    if not obj.handlers:
        raise ValueError(f"{spec} has no tasks: register handlers with @app.task")
    return obj
