"""The dashboard's pages: which URL shows what, read through the operations layer.

Each view takes the dashboard, the caller's identity, the request and the path's parameters, and
returns a response (usually ``dashboard.render(...)``). The table ``PAGES`` is the only routing.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from shardq.errors import BadRequest, InvalidState, NotFound
from shardq.server.operations import PERMISSION, Identity
from shardq.task import STATUS_CODES, STATUS_NAMES, id_to_bytes, is_canonical_id

if TYPE_CHECKING:
    from shardq.dashboard.app import Dashboard

PREVIEW_BYTES = 4096  # of a payload or result shown on a task's page
PAGE_SIZE = 50
STATUSES = STATUS_NAMES

T = TypeVar("T")


async def _now_or_later(result: T | Awaitable[T]) -> T:
    if hasattr(result, "__await__"):
        return await result  # type: ignore[no-any-return]
    return result  # type: ignore[return-value]


def can(who: Identity, operation: str) -> bool:
    """Whether ``who``'s key has the permission ``operation`` needs (buttons show only then)."""
    perm = PERMISSION.get(operation, "admin")
    return perm in who.permissions or "admin" in who.permissions


# -- filters the templates use ------------------------------------------------------------------------

def _ago(ms: int | None) -> str:
    if not ms:
        return "—"
    s = time.time() - ms / 1000
    future = s < 0
    s = abs(s)
    text = (f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else
            f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.0f} d")
    return f"in {text}" if future else f"{text} ago"


def _when(ms: int | None) -> str:
    if not ms:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _num(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


FILTERS = {"ago": _ago, "when": _when, "size": _size, "num": _num}


def preview(data: bytes, total: int | None) -> dict[str, Any]:
    """What a page shows of a payload or result: text (pretty JSON when it is JSON), or the hex of
    its first bytes when it is binary; cut at PREVIEW_BYTES either way."""
    total = len(data) if total is None else total
    cut = data[:PREVIEW_BYTES]
    out: dict[str, Any] = {"total": total, "cut": total > len(cut), "kind": "text", "text": ""}
    try:
        text = cut.decode()
    except UnicodeDecodeError:
        out.update(kind="binary", text=" ".join(f"{b:02x}" for b in cut[:512]))
        return out
    if not out["cut"]:
        try:
            out.update(kind="json", text=json.dumps(json.loads(text), indent=2, ensure_ascii=False))
            return out
        except ValueError:
            pass
    out["text"] = text
    return out


# -- pages --------------------------------------------------------------------------------------------------

async def overview(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await _now_or_later(d.ops.stats(who, False))
    return d.render(request, "overview.html", who=who, stats=stats, page="overview")


async def history(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    resolution = request.rel_url.query.get("resolution", "1s")
    return d.json(await _now_or_later(d.ops.history(who, resolution)))


def _int_arg(q: Any, name: str, lo: int, hi: int, default: int) -> int:
    raw = q.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: {value} is not in {lo}..{hi}")
    return value


async def tasks(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    q = request.rel_url.query
    wanted = q.get("id", "").strip().lower()
    if wanted:
        if not is_canonical_id(wanted):
            raise BadRequest(f"id: {wanted!r} is not a task id (36 characters, like "
                             "0b6e1a9c-3f2d-4c8e-9a7b-5d4c3b2a1f00)")
        raise_to = f"/tasks/{wanted}"
        return web.Response(status=303, headers={"Location": raise_to})
    status = q.get("status", "pending")
    if status not in STATUS_CODES:
        raise BadRequest(f"status: {status!r} is not one of {', '.join(STATUS_NAMES)}")
    task_type = q.get("type", "").strip() or None
    lo = _int_arg(q, "min_priority", 0, 255, 0)
    hi = _int_arg(q, "max_priority", 0, 255, 255)
    if lo > hi:
        raise BadRequest(f"min_priority {lo} is above max_priority {hi}")
    cursor = q.get("cursor") or None
    page = await _now_or_later(d.ops.list_tasks(who, STATUS_CODES[status], task_type, lo, hi, PAGE_SIZE, cursor))
    return d.render(request, "tasks.html", who=who, page="tasks", tasks=page.tasks, cursor=page.cursor,
                    status=status, statuses=STATUSES, type=task_type or "", min_priority=lo, max_priority=hi,
                    first=cursor is None, can_cancel=can(who, "cancel"), can_requeue=can(who, "requeue"))


def _raw_id(params: dict[str, str]) -> bytes:
    text = params["id"].lower()
    if not is_canonical_id(text):
        raise BadRequest(f"id: {params['id']!r} is not a task id")
    return id_to_bytes(text)


async def task(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    q = await _now_or_later(d.ops.query(who, [raw], True, True))
    t = q.tasks[0]
    if t is None:
        raise NotFound(f"no task has id {params['id']}")
    n_result = t.get("result_len") or 0
    result = preview(q.results[:n_result], n_result) if t.get("result_len") is not None else None
    payload = preview(q.results[n_result:], t.get("payload_len") or 0)
    done = request.rel_url.query.get("done")
    return d.render(request, "task.html", who=who, page="tasks", task=t, payload=payload, result=result,
                    done=done if done in ("cancelled", "requeued") else None,
                    can_cancel=can(who, "cancel") and t["status"] in ("pending", "failed", "in_progress"),
                    can_requeue=can(who, "requeue") and t["status"] in ("dead_letter", "failed"))


async def cancel(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    await _now_or_later(d.ops.cancel(who, raw))
    await d.committed()
    return web.Response(status=303, headers={"Location": f"/tasks/{params['id'].lower()}?done=cancelled"})


async def requeue(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    out = await _now_or_later(d.ops.requeue(who, [raw], STATUS_CODES["dead_letter"], None, 1))
    item = (out.get("results") or [{}])[0]
    if item.get("error"):
        raise InvalidState(f"not requeued: {item['error'].get('message', item['error'])}"
                           if isinstance(item["error"], dict) else f"not requeued: {item['error']}")
    await d.committed()
    return web.Response(status=303, headers={"Location": f"/tasks/{params['id'].lower()}?done=requeued"})


async def workers(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await _now_or_later(d.ops.stats(who, True))
    rows = sorted(stats.get("worker_list") or [], key=lambda w: w.get("worker_id", ""))
    done = request.rel_url.query.get("done")
    return d.render(request, "workers.html", who=who, page="workers", workers=rows,
                    can_control=can(who, "worker_control"),
                    done=done if done in ("quiet", "stop") else None, worker=request.rel_url.query.get("worker"))


def _worker_action(action: str) -> Any:
    async def act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
        await _now_or_later(d.ops.worker_control(who, params["worker_id"], action))
        where = urllib.parse.urlencode({"done": action, "worker": params["worker_id"]})
        return web.Response(status=303, headers={"Location": f"/workers?{where}"})
    return act


async def shards(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await _now_or_later(d.ops.stats(who, False))
    return d.render(request, "shards.html", who=who, page="shards", stats=stats)


async def schedules(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    answer, _ = await _now_or_later(d.ops.schedule_list(who))
    rows = sorted(answer.get("schedules") or [], key=lambda s: s["name"])
    done = request.rel_url.query.get("done")
    return d.render(request, "schedules.html", who=who, page="schedules", schedules=rows,
                    down=answer.get("unavailable_shards") or [], can_change=can(who, "schedule_pause"),
                    done=done if done in ("paused", "resumed", "removed") else None,
                    name=request.rel_url.query.get("name"))


def _schedule_action(done: str) -> Any:
    async def act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
        name = params["name"]  # (the path is decoded once, by aiohttp)
        if done == "removed":
            await _now_or_later(d.ops.schedule_remove(who, name))
        else:
            await _now_or_later(d.ops.schedule_pause(who, name, done == "paused"))
        await d.committed()
        where = urllib.parse.urlencode({"done": done, "name": name})
        return web.Response(status=303, headers={"Location": f"/schedules?{where}"})
    return act


PAGES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/", overview),
    ("GET", "/ui/history.json", history),
    ("GET", "/tasks", tasks),
    ("GET", "/tasks/{id}", task),
    ("POST", "/tasks/{id}/cancel", cancel),
    ("POST", "/tasks/{id}/requeue", requeue),
    ("GET", "/workers", workers),
    ("POST", "/workers/{worker_id}/quiet", _worker_action("quiet")),
    ("POST", "/workers/{worker_id}/stop", _worker_action("stop")),
    ("GET", "/shards", shards),
    ("GET", "/schedules", schedules),
    ("POST", "/schedules/{name}/pause", _schedule_action("paused")),
    ("POST", "/schedules/{name}/resume", _schedule_action("resumed")),
    ("POST", "/schedules/{name}/remove", _schedule_action("removed")),
)
_COMPILED = [(m, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", p) + "$"), view)
             for m, p, view in PAGES]


def match(method: str, path: str) -> tuple[Any, dict[str, str]] | None:
    """The view for ``method path`` and the path's parameters; None when no page matches."""
    if method == "HEAD":
        method = "GET"
    for m, pattern, view in _COMPILED:
        found = pattern.match(path)
        if found is not None and m == method:
            return view, found.groupdict()
    return None
