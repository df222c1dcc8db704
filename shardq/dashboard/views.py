"""The dashboard's pages: which URL shows what, read through the operations layer.

Each view takes the dashboard, the caller's identity, the request and the path's parameters, and
returns a response (usually ``dashboard.render(...)``). The table ``PAGES`` is the only routing.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shardq.engine.history import timeline
from shardq.errors import BadRequest, InvalidState, NotFound
from shardq.protocol.insight import parse_bulk, parse_search
from shardq.server import insight, insight_ops
from shardq.server.operations import Identity, settled
from shardq.task import STATUS_CODES, STATUS_NAMES, id_to_bytes, is_canonical_id

if TYPE_CHECKING:
    from shardq.dashboard.app import Dashboard

PREVIEW_BYTES = 4096  # of a payload or result shown on a task's page
PAGE_SIZE = 50
STATUSES = STATUS_NAMES





def can(who: Identity, operation: str) -> bool:
    """Whether ``who``'s key may run ``operation`` (buttons show only then)."""
    return who.allows(operation)


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


def _pathseg(text: Any) -> str:
    return urllib.parse.quote(str(text), safe="")


FILTERS = {"ago": _ago, "when": _when, "size": _size, "num": _num, "pathseg": _pathseg}


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


def sparkline(values: list[Any], top: float | None = None, width: int = 120, height: int = 24) -> str | None:
    """An SVG polyline's points for ``values`` (None where a value is missing is skipped): a
    small chart drawn by the page itself, no script. None with fewer than two values."""
    ys = [float(v) for v in values if isinstance(v, (int, float))]
    if len(ys) < 2:
        return None
    hi = top if top is not None else max(ys)
    hi = hi or 1.0
    step = width / (len(ys) - 1)
    return " ".join(f"{i * step:.1f},{height - min(y, hi) / hi * (height - 2) - 1:.1f}" for i, y in enumerate(ys))


# -- pages --------------------------------------------------------------------------------------------------

async def overview(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await settled(d.ops.stats(who, False))
    return d.render(request, "overview.html", who=who, stats=stats, page="overview")


async def history(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    resolution = request.rel_url.query.get("resolution", "1s")
    return d.json(await settled(d.ops.history(who, resolution)))


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
    if wanted and is_canonical_id(wanted):
        return web.Response(status=303, headers={"Location": f"/tasks/{wanted}"})
    error = q.get("error", "").strip()
    if wanted or error:
        return await _search(d, who, request, wanted, error)
    status = q.get("status", "pending")
    if status not in STATUS_CODES:
        raise BadRequest(f"status: {status!r} is not one of {', '.join(STATUS_NAMES)}")
    task_type = q.get("type", "").strip() or None
    lo = _int_arg(q, "min_priority", 0, 255, 0)
    hi = _int_arg(q, "max_priority", 0, 255, 255)
    if lo > hi:
        raise BadRequest(f"min_priority {lo} is above max_priority {hi}")
    cursor = q.get("cursor") or None
    page = await settled(d.ops.list_tasks(who, STATUS_CODES[status], task_type, lo, hi, PAGE_SIZE, cursor))
    deleted = q.get("deleted")
    return d.render(request, "tasks.html", who=who, page="tasks", tasks=page.tasks, cursor=page.cursor,
                    deleted=deleted if deleted and is_canonical_id(deleted) else None,
                    status=status, statuses=STATUSES, type=task_type or "", min_priority=lo, max_priority=hi,
                    first=cursor is None, can_cancel=can(who, "cancel"), can_requeue=can(who, "requeue"))


async def _search(d: Dashboard, who: Identity, request: web.BaseRequest, prefix: str,
                  error: str) -> web.Response:
    """Tasks by id prefix and/or error text (SEARCH: a bounded scan per page, resumable)."""
    q = request.rel_url.query
    header: dict[str, Any] = {}
    if prefix:
        header["id_prefix"] = prefix
    if error:
        header["error"] = error
    status = q.get("status", "")
    if status:
        header["status"] = status
    if q.get("type", "").strip():
        header["type"] = q["type"].strip()
    header["cursor"] = q.get("cursor") or None
    header["limit"] = PAGE_SIZE
    query, limit, cursor = parse_search(header)
    page = await settled(insight_ops.search(d.ops, who, query, limit, cursor))
    return d.render(request, "search.html", who=who, page="tasks", tasks=page["tasks"], cursor=page["cursor"],
                    prefix=prefix, error=error, status=status, type=q.get("type", "").strip(),
                    statuses=STATUSES)


def _raw_id(params: dict[str, str]) -> bytes:
    text = params["id"].lower()
    if not is_canonical_id(text):
        raise BadRequest(f"id: {params['id']!r} is not a task id")
    return id_to_bytes(text)


async def task(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    q = await settled(d.ops.query(who, [raw], True, True, True))
    t = q.tasks[0]
    if t is None:
        raise NotFound(f"no task has id {params['id']}")
    why = await settled(insight.explain(d.ops, who, raw)) if can(who, "explain") else None
    n_result = t.get("result_len") or 0
    result = preview(q.results[:n_result], n_result) if t.get("result_len") is not None else None
    payload = preview(q.results[n_result:], t.get("payload_len") or 0)
    done = request.rel_url.query.get("done")
    events = timeline(t["history"]) if t.get("history") else []
    return d.render(request, "task.html", who=who, page="tasks", task=t, payload=payload, result=result,
                    why=why, events=events,
                    done=done if done in ("cancelled", "requeued") else None,
                    can_cancel=can(who, "cancel") and t["status"] in ("pending", "failed", "in_progress"),
                    can_requeue=can(who, "requeue") and t["status"] in ("dead_letter", "failed"),
                    can_delete=can(who, "delete") and t["status"] in ("completed", "cancelled", "dead_letter"))


async def cancel(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    await settled(d.ops.cancel(who, raw))
    await d.committed()
    return web.Response(status=303, headers={"Location": f"/tasks/{params['id'].lower()}?done=cancelled"})


async def requeue(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    out = await settled(d.ops.requeue(who, [raw], STATUS_CODES["dead_letter"], None, 1))
    _refused(out, "requeued")
    await d.committed()
    return web.Response(status=303, headers={"Location": f"/tasks/{params['id'].lower()}?done=requeued"})


async def workers(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await settled(d.ops.stats(who, True))
    rows = sorted(stats.get("worker_list") or [], key=lambda w: w.get("worker_id", ""))
    usage = await settled(d.ops.worker_usage(who))
    for w in rows:
        points = usage.get(w.get("worker_id", "")) or []
        w["cpu_line"] = sparkline([p[1] for p in points], top=100.0)
        w["rss_line"] = sparkline([p[2] for p in points])
    done = request.rel_url.query.get("done")
    return d.render(request, "workers.html", who=who, page="workers", workers=rows,
                    can_control=can(who, "worker_control"),
                    done=done if done in ("quiet", "stop") else None, worker=request.rel_url.query.get("worker"))


def _worker_action(action: str) -> Any:
    async def act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
        await settled(d.ops.worker_control(who, params["worker_id"], action))
        where = urllib.parse.urlencode({"done": action, "worker": params["worker_id"]})
        return web.Response(status=303, headers={"Location": f"/workers?{where}"})
    return act


async def shards(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    stats = await settled(d.ops.stats(who, False))
    return d.render(request, "shards.html", who=who, page="shards", stats=stats)


async def schedules(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    answer, _ = await settled(d.ops.schedule_list(who))
    rows = sorted(answer.get("schedules") or [], key=lambda s: s["name"])
    done = request.rel_url.query.get("done")
    return d.render(request, "schedules.html", who=who, page="schedules", schedules=rows,
                    down=answer.get("unavailable_shards") or [], can_change=can(who, "schedule_pause"),
                    done=done if done in ("paused", "resumed", "removed") else None,
                    name=request.rel_url.query.get("name"))


def _schedule_action(done: str) -> Any:
    async def act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
        name = params["name"]
        if done == "removed":
            await settled(d.ops.schedule_remove(who, name))
        else:
            await settled(d.ops.schedule_pause(who, name, done == "paused"))
        await d.committed()
        where = urllib.parse.urlencode({"done": done, "name": name})
        return web.Response(status=303, headers={"Location": f"/schedules?{where}"})
    return act


def _refused(out: dict[str, Any], verb: str) -> None:
    """The error of the one item of a per-id answer (REQUEUE, DELETE: ``{"results": [...]}``)."""
    err = (out.get("results") or [{}])[0].get("error")
    if err:
        raise InvalidState(f"not {verb}: {err.get('message', err) if isinstance(err, dict) else err}")


async def delete(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    raw = _raw_id(params)
    out = await settled(insight_ops.delete(d.ops, who, [raw]))
    _refused(out, "deleted")
    await d.committed()
    return web.Response(status=303, headers={"Location": "/tasks?" + urllib.parse.urlencode(
        {"deleted": params["id"].lower()})})


async def types(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    answer = await settled(insight_ops.type_stats(d.ops, who, None))
    controls = {c["type"]: c for c in
                (await settled(d.ops.get_controls(who, None))).get("controls") or []}
    rows = {r["type"]: r for r in answer.get("types") or []}
    for t in controls:  # a paused or limited type shows even with no live task
        rows.setdefault(t, {"type": t})
    done = request.rel_url.query.get("done")
    return d.render(request, "types.html", who=who, page="types", types=[rows[t] for t in sorted(rows)],
                    controls=controls, window_s=answer.get("window_s"), missing=answer.get("shards_missing") or [],
                    can_pause=can(who, "pause_type"), done=done if done in ("paused", "resumed") else None,
                    type_done=request.rel_url.query.get("type"))


def _type_action(action: str) -> Any:
    async def act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
        name = params["task_type"]
        if action == "paused":
            await settled(d.ops.pause_type(who, name))
        else:
            await settled(d.ops.resume_type(who, name))
        await d.committed()
        return web.Response(status=303, headers={"Location": "/types?" + urllib.parse.urlencode(
            {"done": action, "type": name})})
    return act


async def dead_letters(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    task_type = request.rel_url.query.get("type", "").strip() or None
    answer = await settled(insight_ops.dlq_groups(d.ops, who, task_type))
    done = request.rel_url.query
    return d.render(request, "dlq.html", who=who, page="dlq", groups=answer.get("groups") or [],
                    total=answer.get("total", 0), type=task_type or "",
                    can_requeue=can(who, "bulk"), done=done.get("done"), n=done.get("n"))


def _group_filter(action: str, group: str, limit: int | None = None, dry_run: bool = False) -> Any:
    header: dict[str, Any] = {"action": action, "status": "dead_letter", "group": group, "dry_run": dry_run}
    if limit is not None:
        header["limit"] = limit
    return parse_bulk(header)


async def group_confirm(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    """Step 1 of a bulk action on a group: count what it would touch (a dry run) and ask."""
    action = params["action"]
    if action not in ("requeue", "delete"):
        raise NotFound(f"no action {action}")
    act, flt, limit, _ = _group_filter(action, params["group"], dry_run=True)
    counted = await settled(insight_ops.bulk(d.ops, who, act, flt, limit, True))
    groups = await settled(insight_ops.dlq_groups(d.ops, who, None))
    group = next((g for g in groups.get("groups") or [] if g["group"] == params["group"]), None)
    return d.render(request, "dlq_confirm.html", who=who, page="dlq", action=action, group=group,
                    group_id=params["group"], matched=counted.get("matched", 0))


async def group_act(d: Dashboard, who: Identity, request: web.BaseRequest, params: dict[str, str]) -> web.Response:
    """Step 2: do it, for at most the count the operator confirmed."""
    action = params["action"]
    if action not in ("requeue", "delete"):
        raise NotFound(f"no action {action}")
    form = await request.post()
    try:
        confirmed = int(str(form.get("confirmed", "")))
    except ValueError:
        raise BadRequest("confirmed: the count shown on the confirmation page is required") from None
    if confirmed < 1:
        raise BadRequest("confirmed: nothing to do")
    act, flt, limit, _ = _group_filter(action, params["group"], limit=confirmed)
    out = await settled(insight_ops.bulk(d.ops, who, act, flt, limit, False))
    await d.committed()
    n = out.get("requeued", out.get("deleted", 0))
    where = urllib.parse.urlencode({"done": "requeued" if action == "requeue" else "deleted", "n": n})
    return web.Response(status=303, headers={"Location": f"/dlq?{where}"})


PAGES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/", overview),
    ("GET", "/ui/history.json", history),
    ("GET", "/tasks", tasks),
    ("GET", "/tasks/{id}", task),
    ("POST", "/tasks/{id}/cancel", cancel),
    ("POST", "/tasks/{id}/requeue", requeue),
    ("POST", "/tasks/{id}/delete", delete),
    ("GET", "/types", types),
    ("POST", "/types/{task_type}/pause", _type_action("paused")),
    ("POST", "/types/{task_type}/resume", _type_action("resumed")),
    ("GET", "/dlq", dead_letters),
    ("GET", "/dlq/{group}/{action}", group_confirm),
    ("POST", "/dlq/{group}/{action}", group_act),
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
    """The view for ``method path`` (the raw, still percent-encoded path) and the path's
    parameters, decoded; None when no page matches. A parameter may hold any character (a task
    type with a "/"): the templates encode it with ``pathseg``."""
    if method == "HEAD":
        method = "GET"
    for m, pattern, view in _COMPILED:
        found = pattern.match(path)
        if found is not None and m == method:
            return view, {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
    return None
