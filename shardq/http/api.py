"""The HTTP API's requests: match a route, authenticate, decode, run the operation, encode.

Rules:
1. This file only translates, as session.py does for the TCP protocol: a body or query becomes
   the typed arguments of one ``Operations`` method (operations.py), and its result, or the
   WireError it raises, becomes JSON (or a problem, problems.py). What a request *does* lives in
   operations.py: routing to owner shards, permissions, the claim policy.
2. Nothing is answered before this loop turn's writes are committed: every answer waits for the
   shard's group commit (``_committed``), and a failed commit answers 503, as a TCP ACK would
   become a NACK.
3. Bad input is a 4xx naming what was wrong (the field, the parameter, the header); anything
   unexpected is a logged 500, never a stack trace to the client.
4. Who asks is ``Operations.authenticate(<the Bearer key>)``; the Identity it returns goes to
   every operation. CORS (``api.cors_origins``) is answered here for every route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from aiohttp import web

from shardq.errors import BadRequest, Forbidden, NotFound, TooLarge, Unauthorized, Unavailable, WireError
from shardq.http import schema as s
from shardq.http.control_api import ApiControls
from shardq.http.insight import InsightApi
from shardq.http.insight_api import TriageApi
from shardq.http.openapi import build_document
from shardq.http.problems import problem
from shardq.http.routes import ROUTES, Route, Router
from shardq.http.schedule_api import ScheduleApi
from shardq.http.worker_control_api import WorkerControlApi
from shardq.protocol.frames import MAX_FRAME, MsgType
from shardq.protocol.requests import parse_id
from shardq.protocol.task_options import http_task_options
from shardq.server.claims import Caller
from shardq.server.operations import Identity, Operations, settled
from shardq.specs import ResultItem, TaskSpec
from shardq.task import STATUS_CODES, id_to_bytes

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.http")

# A body is at most one frame of the TCP protocol: the same requests, the same bound.
MAX_BODY = MAX_FRAME
READY_PING_S = 1.0  # /readyz: how long a peer shard has to answer a PING
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
# /api/docs: swagger-ui-dist, vendored (static/VERSION says which release, static/LICENSE its licence).
STATIC_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "init.js": "text/javascript", "index.html": "text/html", "LICENSE": "text/plain",
                "VERSION": "text/plain", "swagger-ui-bundle.js.LICENSE.txt": "text/plain"}
CORS_MAX_AGE_S = 600
JSON = "application/json"

_encode = msgspec.json.Encoder().encode
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


class Gone(Exception):
    """The client hung up while its request waited: nobody to answer."""


class Committed:
    """Stands in the group commit's outbox for one HTTP answer (shard.reply): ``send`` runs
    once this turn's writes are committed, or failed to be."""

    __slots__ = ("fut", "shard", "out_pending")

    def __init__(self, shard: ShardServer, fut: asyncio.Future[bool]) -> None:
        self.shard, self.fut, self.out_pending = shard, fut, 0

    def send(self, frame: bytes) -> None:
        if not self.fut.done():
            self.fut.set_result(not self.shard.last_flush_failed())


def _decoder(t: type) -> msgspec.json.Decoder[Any]:
    d = _DECODERS.get(t)
    if d is None:
        d = _DECODERS[t] = msgspec.json.Decoder(t)
    return d


def _where(err: msgspec.ValidationError, what: str) -> str:
    """msgspec's "... - at `$.tasks[0].priority`" as "body: tasks[0].priority: ..."."""
    text = str(err)
    msg, sep, at = text.rpartition(" - at `$")
    if not sep:
        return f"{what}: {text}"
    at = at.rstrip("`").lstrip(".")
    return f"{what} {at}: {msg}" if what == "query parameter" else f"{what}: {at}: {msg}"


def _bytes(raw: Any, text: Any, b64: Any, where: str, name: str) -> bytes:
    """A payload or a result given as JSON, text or base64 (at most one)."""
    given = [k for k, v in ((name, raw), (f"{name}_text", text), (f"{name}_b64", b64))
             if v is not msgspec.UNSET]
    if len(given) > 1:
        raise BadRequest(f"{where.rstrip('.') or 'body'}: give one of {name}, {name}_text, {name}_b64, not {' and '.join(given)}")
    if raw is not msgspec.UNSET:
        return bytes(raw)
    if text is not msgspec.UNSET:
        return text.encode()
    if b64 is not msgspec.UNSET:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"{where}{name}_b64: not valid base64 ({exc})") from None
    return b""


def render(data: bytes, encoding: str, name: str, into: dict[str, Any]) -> None:
    """Put ``data`` into ``into`` as ``name`` (JSON), ``name_text`` or ``name_b64``."""
    if encoding in ("auto", "json"):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            into[name] = msgspec.Raw(data)
            return
    if encoding in ("auto", "text"):
        try:
            into[f"{name}_text"] = data.decode()
            return
        except UnicodeDecodeError:
            pass
    into[f"{name}_b64"] = base64.b64encode(data).decode()


def _split(tasks: list[dict[str, Any] | None], blob: bytes, key: str, name: str, encoding: str) -> None:
    """Cut ``blob`` (the payloads or results of ``tasks``, in order) into each task."""
    at = 0
    for t in tasks:
        if t is None:
            continue
        n = t[key] or 0
        if name == "result" and t["status"] != "completed" and not n:
            continue
        render(blob[at:at + n], encoding, name, t)
        at += n


class Api(ScheduleApi, WorkerControlApi, InsightApi, TriageApi, ApiControls):  # insight routes: http/insight.py, insight_api.py
    """One shard's HTTP API: ``handle`` is aiohttp's request handler (server.py)."""

    _payload_of = staticmethod(_bytes)  # for the mixins (schedule_api.py)
    _render = staticmethod(render)

    def __init__(self, shard: ShardServer, ops: Operations, callers: Callable[[Any], Caller | None]) -> None:
        self.shard = shard
        self.ops = ops
        self.callers = callers  # the Caller of a request's connection (server.py)
        self.router = Router(ROUTES)
        self.origins = frozenset(shard.cfg.api.cors_origins)
        self.document = _encode(build_document())
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- the request -------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        cors = self._cors_headers(origin)
        try:
            if request.method == "OPTIONS":
                return self._options(request, origin)
            path = request.rel_url.raw_path
            if path == "/api/docs" or path.startswith("/api/docs/"):
                return self._static(request, path)
            found = self.router.methods(path)
            if found is None:
                raise _HttpError(404, NotFound(f"no route {path}; the routes are listed at /api/v1/openapi.json"))
            methods, params = found
            route = methods.get(request.method)
            if route is None:
                raise _HttpError(405, BadRequest(f"{request.method} is not allowed on {path} "
                                                 f"(allowed: {', '.join(sorted(methods))})"),
                                 {"Allow": ", ".join(sorted(methods))})
            status, body = await self._run(route, request, params)
            headers = {"Content-Type": JSON, **cors}
            return web.Response(status=status, body=body, headers=headers)
        except Gone:
            return web.Response(status=499)  # (never sent: the connection is closed)
        except _Answer as exc:
            return web.Response(status=exc.status, body=exc.body, headers={"Content-Type": JSON, **cors})
        except _HttpError as exc:
            code, headers, body = problem(exc.err, exc.status)
            return web.Response(status=code, body=body, headers={**headers, **exc.headers, **cors})
        except WireError as err:
            delay = getattr(err, "delay_s", 0.0)  # repeated failed logins from one address
            if delay:
                await asyncio.sleep(delay)  # this request waits; the shard's loop does not
            code, headers, body = problem(err)
            return web.Response(status=code, body=body, headers={**headers, **cors})
        except Exception:
            log.exception("internal error on %s %s", request.method, request.rel_url.raw_path)
            code, headers, body = problem(WireError("internal error; the server logged it"))
            return web.Response(status=code, body=body, headers={**headers, **cors})

    async def _run(self, route: Route, request: web.BaseRequest, params: dict[str, str]) -> tuple[int, bytes]:
        if self.shard.closing:
            raise Unavailable("server is shutting down", retry_after_ms=1000)
        who = self._identity(request) if route.auth else None
        query = self._query(route, request)
        body = await self._body(route, request)
        handler: Callable[..., Any] = getattr(self, route.operation)
        result = handler(who, params, query, body, request)
        if hasattr(result, "__await__"):
            result = await result
        if route.auth:
            await self._committed()
        return route.status, result if type(result) is bytes else _encode(result)

    async def committed(self) -> None:
        """Wait until what this request changed is written (the dashboard's actions use it too)."""
        await self._committed()

    async def _committed(self) -> None:
        shard = self.shard
        if shard.last_flush_failed():
            raise shard.unavailable()  # an answer built before a failed commit: it may be rolled back
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        shard.reply(Committed(shard, fut), b"")  # type: ignore[arg-type]
        if not await fut:
            raise shard.unavailable()

    def _identity(self, request: web.BaseRequest) -> Identity:
        header = request.headers.get("Authorization")
        key = None
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise Unauthorized("Authorization: expected 'Bearer <api key>'")
            key = credentials.strip()
        transport = request.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        # The peer and the channel let the rule on keys over plaintext apply (docs/security.md).
        return self.ops.authenticate(key, peer=request.remote, tls=tls)

    def _query(self, route: Route, request: web.BaseRequest) -> Any:
        q = request.rel_url.query
        if route.query is None:
            if q:
                raise BadRequest(f"query parameter {next(iter(q))}: this route takes none")
            return None
        values: dict[str, str] = {}
        for k in q:
            if k in values:
                raise BadRequest(f"query parameter {k}: given more than once")
            values[k] = q[k]
        try:
            return msgspec.convert(values, route.query, strict=False)
        except msgspec.ValidationError as err:
            text = str(err)
            if text.startswith("Object contains unknown field"):
                raise BadRequest(f"query parameter {text.split('`')[1]}: unknown "
                                 f"(allowed: {', '.join(route.query.__struct_fields__)})") from None
            raise BadRequest(_where(err, "query parameter")) from None

    async def _body(self, route: Route, request: web.BaseRequest) -> Any:
        n = request.content_length
        if n is not None and n > MAX_BODY:
            raise TooLarge(f"the body is {n} bytes, more than the {MAX_BODY}-byte limit")
        if route.body is None:
            if n or (n is None and request.body_exists and await request.content.read(1)):
                raise BadRequest(f"{route.method} {route.path} takes no body")
            return None
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"the body is more than the {MAX_BODY}-byte limit") from None
        if not data.strip():
            if route.body_required:
                raise BadRequest("body: required (a JSON object)")
            data = b"{}"
        ctype = request.content_type
        if request.headers.get("Content-Type") and ctype != JSON and not ctype.endswith("+json"):
            raise _HttpError(415, BadRequest(f"Content-Type: {ctype} is not supported; send {JSON}"))
        try:
            return _decoder(route.body).decode(data)
        except msgspec.ValidationError as err:
            raise BadRequest(_where(err, "body")) from None
        except msgspec.DecodeError as err:
            raise BadRequest(f"body: not valid JSON ({err})") from None

    # -- CORS -----------------------------------------------------------------------------------

    def _allowed(self, origin: str | None) -> bool:
        return origin is not None and (origin in self.origins or "*" in self.origins)

    def _cors_headers(self, origin: str | None) -> dict[str, str]:
        if not self._allowed(origin):
            return {}
        assert origin is not None
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": "Retry-After, WWW-Authenticate"}

    def _options(self, request: web.BaseRequest, origin: str | None) -> web.Response:
        found = self.router.methods(request.rel_url.raw_path)
        if found is None:
            raise _HttpError(404, NotFound(f"no route {request.rel_url.raw_path}"))
        allow = ", ".join(sorted({*found[0], "OPTIONS"}))
        asked = request.headers.get("Access-Control-Request-Method")
        if asked is None:
            return web.Response(status=204, headers={"Allow": allow})
        if not self._allowed(origin):
            raise _HttpError(403, Forbidden(f"origin {origin!r} is not allowed (api.cors_origins)"))
        if asked not in found[0]:
            raise _HttpError(405, BadRequest(f"{asked} is not allowed on {request.rel_url.raw_path}"),
                             {"Allow": allow})
        return web.Response(status=204, headers={
            **self._cors_headers(origin), "Access-Control-Allow-Methods": allow,
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})

    # -- documents ------------------------------------------------------------------------------

    def _static(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise _HttpError(405, BadRequest(f"{request.method} is not allowed on {path}"), {"Allow": "GET"})
        name = path[len("/api/docs/"):] if path.startswith("/api/docs/") else "index.html"
        if name == "":
            name = "index.html"
        ctype = STATIC_FILES.get(name)
        if ctype is None:
            raise _HttpError(404, NotFound(f"no file {name} in the API reference"))
        return web.FileResponse(os.path.join(STATIC_DIR, name),
                                headers={"Content-Type": ctype, "Cache-Control": "public, max-age=3600"})

    def openapi(self, who: None, params: dict[str, str], query: None, body: None,
                request: web.BaseRequest) -> bytes:
        return self.document

    def healthz(self, who: None, params: dict[str, str], query: None, body: None,
                request: web.BaseRequest) -> s.Health:
        return s.Health(status="ok", shard=self.shard.index)

    async def readyz(self, who: None, params: dict[str, str], query: None, body: None,
                     request: web.BaseRequest) -> s.Readiness:
        shard = self.shard
        not_ready = [] if shard.writable and not shard.closing else [shard.index]
        if shard.peers is not None:
            others = shard.peers.others()
            answers = await asyncio.gather(
                *(asyncio.wait_for(shard.peers.request(i, MsgType.PING, {}), READY_PING_S) for i in others),
                return_exceptions=True)
            not_ready += [i for i, a in zip(others, answers) if isinstance(a, BaseException)]
        ready = s.Readiness(status="ready" if not not_ready else "not ready", shards=shard.shards,
                            not_ready=sorted(not_ready))
        if not_ready:
            raise _Answer(503, _encode(ready))
        return ready

    # -- producers -----------------------------------------------------------------------------------

    def _spec(self, t: s.NewTask, where: str) -> TaskSpec:
        if t.delay_ms is not None and t.scheduled_ms is not None:
            raise BadRequest(f"{where.rstrip('.')}: give delay_ms or scheduled_ms, not both")
        payload = _bytes(t.payload, t.payload_text, t.payload_b64, where, "payload")
        limit = self.shard.engine.s.max_payload
        if len(payload) > limit:
            raise TooLarge(f"{where}payload: {len(payload)} bytes is over the {limit}-byte payload limit")
        return TaskSpec(type=t.type, payload=payload, priority=t.priority, delay_ms=t.delay_ms,
                        scheduled_ms=t.scheduled_ms, max_retries=t.max_retries,
                        timeout_seconds=t.timeout_seconds,
                        depends_on=tuple(id_to_bytes(d) for d in t.depends_on or ()),
                        id=None if t.id is None else id_to_bytes(t.id),
                        options=http_task_options(t, where))

    async def submit_task(self, who: Identity, params: dict[str, str], query: None, body: s.NewTask,
                          request: web.BaseRequest) -> s.Submitted:
        ids = await settled(self.ops.submit(who, [self._spec(body, "")]))
        return s.Submitted(id=ids[0], duplicate=bool(getattr(ids, "duplicates", None)))

    async def submit_batch(self, who: Identity, params: dict[str, str], query: None, body: s.Batch,
                           request: web.BaseRequest) -> s.SubmittedBatch:
        specs = [self._spec(t, f"tasks[{i}].") for i, t in enumerate(body.tasks)]
        ids = await settled(self.ops.submit(who, specs))
        return s.SubmittedBatch(ids=ids, duplicates=list(getattr(ids, "duplicates", None) or ()))

    async def get_task(self, who: Identity, params: dict[str, str], query: Any, body: None,
                       request: web.BaseRequest) -> dict[str, Any]:
        raw = _task_id(params["id"])
        q = await settled(self.ops.query(who, [raw], query.with_result))
        task = q.tasks[0]
        if task is None:
            raise NotFound(f"no task has id {params['id']}")
        if query.with_result:
            _split(q.tasks, q.results, "result_len", "result", query.encoding)
        return task

    async def query_tasks(self, who: Identity, params: dict[str, str], query: None, body: s.Query,
                          request: web.BaseRequest) -> dict[str, Any]:
        q = await settled(self.ops.query(who, [id_to_bytes(i) for i in body.ids], body.with_result))
        if body.with_result:
            _split(q.tasks, q.results, "result_len", "result", body.encoding)
        return {"tasks": q.tasks}

    async def list_tasks(self, who: Identity, params: dict[str, str], query: Any, body: None,
                         request: web.BaseRequest) -> dict[str, Any]:
        if query.min_priority > query.max_priority:
            raise BadRequest(f"min_priority {query.min_priority} is above max_priority {query.max_priority}")
        page = await settled(self.ops.list_tasks(
            who, STATUS_CODES[query.status], _opt(query.type), query.min_priority, query.max_priority,
            query.limit, _opt(query.cursor)))
        return {"tasks": page.tasks, "cursor": page.cursor}

    async def cancel_task(self, who: Identity, params: dict[str, str], query: None, body: None,
                          request: web.BaseRequest) -> s.Cancelled:
        raw = _task_id(params["id"])
        status = await settled(self.ops.cancel(who, raw))
        return s.Cancelled(id=params["id"], status=status)

    async def requeue(self, who: Identity, params: dict[str, str], query: None, body: s.Requeue,
                      request: web.BaseRequest) -> dict[str, Any]:
        ids = None if body.ids is None else [id_to_bytes(i) for i in body.ids]
        return await settled(self.ops.requeue(who, ids, STATUS_CODES[body.status], body.type,
                                                    body.limit))

    async def stats(self, who: Identity, params: dict[str, str], query: None, body: None,
                    request: web.BaseRequest) -> dict[str, Any]:
        return await settled(self.ops.stats(who, False))

    async def stats_history(self, who: Identity, params: dict[str, str], query: Any, body: None,
                            request: web.BaseRequest) -> dict[str, Any]:
        return await settled(self.ops.history(who, query.resolution))

    async def list_workers(self, who: Identity, params: dict[str, str], query: None, body: None,
                           request: web.BaseRequest) -> dict[str, Any]:
        stats = await settled(self.ops.stats(who, True))
        return {"workers": stats.get("worker_list") or []}

    # -- workers -------------------------------------------------------------------------------------

    def register_worker(self, who: Identity, params: dict[str, str], query: None, body: s.Register,
                        request: web.BaseRequest) -> s.Registered:
        worker_id = _worker_id(params)
        self.ops.register(who, worker_id, {"hostname": body.hostname, "pid": body.pid,
                                           "types": body.types, "concurrency": body.concurrency})
        return s.Registered(worker_id=worker_id)

    async def claim(self, who: Identity, params: dict[str, str], query: None, body: s.Claim,
                    request: web.BaseRequest) -> dict[str, Any]:
        caller = self.callers(request.protocol)
        if caller is None or caller.closing:
            raise Gone()
        result = self.ops.claim(who, caller, _worker_id(params), body.max, body.wait_ms,
                                frozenset(body.types) if body.types is not None else None,
                                body.dependency_results)
        if hasattr(result, "__await__"):
            fut = asyncio.ensure_future(result)
            await asyncio.wait((fut,))  # a hang-up cancels it (Caller.hang_up): no exception here
            if fut.cancelled():
                raise Gone()
            result = fut.result()
            if result is None:
                raise Gone()  # the caller went away meanwhile; what it was given went back
        _split(result.tasks, result.payloads, "payload_len", "payload", body.encoding)
        if body.dependency_results:  # after the payloads, each task's carried results in order
            at = sum(t["payload_len"] for t in result.tasks)
            for t in result.tasks:
                for dep in t.get("dependency_results") or ():
                    render(result.payloads[at:at + dep["result_len"]], body.encoding, "result", dep)
                    at += dep["result_len"]
        return {"tasks": result.tasks}

    async def results(self, who: Identity, params: dict[str, str], query: None, body: s.Results,
                      request: web.BaseRequest) -> dict[str, Any]:
        items = []
        for i, r in enumerate(body.results):
            where = f"results[{i}]."
            item = ResultItem(id_to_bytes(r.id), r.attempt, r.status)
            data = _bytes(r.result, r.result_text, r.result_b64, where, "result")
            if r.status == "completed":
                item.result = data
            elif data:
                raise BadRequest(f"{where}result: only a completed attempt has a result")
            if r.status == "failed":
                if r.error is None:
                    raise BadRequest(f"{where}error: required when status is failed")
                item.error, item.retry = r.error, r.retry
            items.append(item)
        out = await settled(self.ops.result(who, _worker_id(params), items))
        return {"results": out}

    async def heartbeat(self, who: Identity, params: dict[str, str], query: None, body: s.Heartbeat,
                        request: web.BaseRequest) -> dict[str, Any]:
        info = {"cpu_percent": body.cpu_percent, "memory_rss": body.memory_rss,
                "memory_percent": body.memory_percent, "state": body.state}
        active = None if body.active is None else [id_to_bytes(i) for i in body.active]
        beat = await settled(self.ops.heartbeat(who, _worker_id(params), info, active))
        out: dict[str, Any] = {"lease_expires_ms": beat.expires}
        if beat.lost:
            out["lost"] = beat.lost
        if beat.cancelled:
            out["cancelled"] = beat.cancelled
        if beat.command is not None:
            out["command"] = beat.command
        return out

    async def deregister_worker(self, who: Identity, params: dict[str, str], query: None, body: None,
                                request: web.BaseRequest) -> s.Released:
        return s.Released(released=await settled(self.ops.deregister(who, _worker_id(params))))


class _HttpError(Exception):
    """A WireError with the HTTP status it gets here (one no wire error maps to)."""

    def __init__(self, status: int, err: WireError, headers: dict[str, str] | None = None) -> None:
        super().__init__(err.message)
        self.status, self.err, self.headers = status, err, headers or {}


class _Answer(Exception):
    """A finished answer with a status other than the route's (/readyz: 503)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body




def _opt(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _task_id(value: str) -> bytes:
    return parse_id(value, "id")


def _worker_id(params: dict[str, str]) -> str:
    wid = params["worker_id"]
    if not 0 < len(wid) <= 255:
        raise BadRequest(f"worker_id: must be 1..255 characters, got {len(wid)}")
    return wid
