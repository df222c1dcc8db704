"""The web dashboard: server-rendered pages at ``/`` on the HTTP API's port, same TLS, same keys.

Rules:
1. Every page reads and every button acts through the operations layer (server/operations.py),
   with the identity of the browser's API key: what a key may not do, the page neither shows
   as a button nor does when posted (Forbidden, shown as a message).
2. HTML is rendered by jinja2 with autoescaping on: nothing a producer wrote (types, payloads,
   errors, worker ids) reaches the page unescaped. Payloads and results are previewed, cut at
   PREVIEW_BYTES.
3. Live parts re-render as fragments: htmx asks for the same URL with ``HX-Request`` and gets only
   the page's ``live`` block; the charts' script fetches /ui/history.json. Both poll only while the
   tab is visible, so a tab in the background costs the server nothing.
4. Signing in: with auth on, the key is given once on /login and kept in a cookie that scripts
   cannot read (HttpOnly), sent only to this site (SameSite=Strict) and only over TLS when the
   server has it (Secure). Every action is a POST whose form carries this browser's CSRF token
   (a random value in a cookie of its own, echoed by the form: double submit) and whose Origin,
   when the browser sends one, is this site: guards on top of SameSite.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from shardq.dashboard import views
from shardq.errors import BadRequest, Forbidden, NotFound, Unauthorized, WireError
from shardq.server.operations import Identity, Operations

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.dashboard")

COOKIE = "shardq_key"
# Double-submit CSRF token: a random value in its own cookie, echoed by every form as "csrf". A
# page of another site can neither read the cookie nor guess the value, so it cannot forge a form.
CSRF_COOKIE = "shardq_csrf"
_TOKEN = re.compile(r"[0-9a-f]{32}")
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
STATIC_FILES = {
    "htmx.min.js": "text/javascript", "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css", "dashboard.css": "text/css", "dashboard.js": "text/javascript",
}
HTML = "text/html; charset=utf-8"
# The pages a browser may frame nothing of, run no inline script in, and load nothing foreign into.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
}

Page = Callable[["Dashboard", Identity, web.BaseRequest, dict[str, str]], Awaitable[Any]]


class Redirect(Exception):
    def __init__(self, location: str, cookie: str | None = None, clear: bool = False) -> None:
        self.location, self.cookie, self.clear = location, cookie, clear


class Dashboard:
    def __init__(self, shard: ShardServer, ops: Operations,
                 committed: Callable[[], Awaitable[None]]) -> None:
        self.shard = shard
        self.ops = ops
        self.committed = committed  # waits until this loop turn's writes are on disk (http/api.py)
        self.env = Environment(loader=PackageLoader("shardq.dashboard", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters.update(views.FILTERS)
        self.tls = shard.tls is not None

    # -- the request --------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = not _TOKEN.fullmatch(token)
        request["csrf"] = token = secrets.token_hex(16) if fresh else token
        response = await self._handle(request)
        if fresh and not request.rel_url.path.startswith("/ui/static/"):
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=self.tls, path="/")
        return response

    async def _checked_post(self, request: web.BaseRequest) -> None:
        """Every action: a POST from this site whose form carries the CSRF token of this browser."""
        self._same_origin(request)
        form = await request.post()
        sent = str(form.get("csrf") or "")
        if not sent or not hmac.compare_digest(sent, request["csrf"]):
            raise Forbidden("this form's CSRF token is missing or stale: reload the page and try again")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.path
        try:
            if path.startswith("/ui/static/"):
                return self._static(request, path[len("/ui/static/"):])
            if path == "/login":
                return await self._login(request)
            if path == "/logout" and request.method == "POST":
                await self._checked_post(request)
                raise Redirect("/login", clear=True)
            found = views.match(request.method, request.rel_url.raw_path)
            if found is None:
                raise NotFound(f"no page {path}")
            view, params = found
            if request.method == "POST":
                await self._checked_post(request)
            who = self._identity(request)
            return await view(self, who, request, params)
        except Redirect as r:
            response = web.Response(status=303, headers={"Location": r.location, **SECURITY_HEADERS})
            if r.cookie is not None:
                response.set_cookie(COOKIE, r.cookie, httponly=True, samesite="Strict", secure=self.tls,
                                    path="/")
            if r.clear:
                response.del_cookie(COOKIE, path="/")
            return response
        except Unauthorized as err:
            await _throttled(err)
            if request.method == "GET" and "HX-Request" not in request.headers:
                location = "/login?next=" + quote(str(request.rel_url), safe="")
                return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})
            return self.error_page(request, 401, str(err))
        except WireError as err:
            status = {"NotFound": 404, "Forbidden": 403, "BadRequest": 400, "InvalidState": 409,
                      "QueueFull": 429, "Unavailable": 503}.get(type(err).__name__, 500)
            return self.error_page(request, status, str(err))
        except Exception:
            log.exception("dashboard error on %s %s", request.method, path)
            return self.error_page(request, 500, "internal error; the server logged it")

    def _identity(self, request: web.BaseRequest) -> Identity:
        key = request.cookies.get(COOKIE)
        transport = request.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        return self.ops.authenticate(key or None, peer=request.remote, tls=tls)

    def _same_origin(self, request: web.BaseRequest) -> None:
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return  # SameSite=Strict already kept the cookie off a cross-site request
        if urlsplit(origin).netloc != request.host:
            raise Forbidden(f"a dashboard action from another site ({origin}) is refused")

    # -- rendering ----------------------------------------------------------------------------------

    def render(self, request: web.BaseRequest, template_name: str, http_status: int = 200,
               **ctx: Any) -> web.Response:
        template = self.env.get_template(template_name)
        ctx.setdefault("auth_on", self.shard.cfg.auth.enabled)
        ctx["path"] = request.rel_url.path
        ctx["csrf"] = request["csrf"]  # every form sends it back (_checked_post)
        if "HX-Request" in request.headers and "live" in template.blocks:
            body = "".join(template.blocks["live"](template.new_context(ctx)))
        else:
            body = template.render(ctx)
        return web.Response(status=http_status, body=body.encode(), headers={"Content-Type": HTML, "Cache-Control": "no-store",
                                                               **SECURITY_HEADERS})

    def json(self, data: Any) -> web.Response:
        return web.Response(body=orjson.dumps(data), headers={"Content-Type": "application/json",
                                                             "Cache-Control": "no-store", **SECURITY_HEADERS})

    def error_page(self, request: web.BaseRequest, status: int, message: str) -> web.Response:
        return self.render(request, "error.html", http_status=status, status_code=status, message=message,
                           who=None)

    def _static(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        ctype = STATIC_FILES.get(name)
        if ctype is None or request.method not in ("GET", "HEAD"):
            raise NotFound(f"no file {name}")
        return web.FileResponse(os.path.join(STATIC_DIR, name),
                                headers={"Content-Type": ctype, "Cache-Control": "public, max-age=3600",
                                         "X-Content-Type-Options": "nosniff"})

    # -- signing in ---------------------------------------------------------------------------------

    async def _login(self, request: web.BaseRequest) -> web.Response:
        nxt = request.rel_url.query.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # only a path on this site: no open redirect
        if request.method == "GET":
            return self.render(request, "login.html", next=nxt, message=None, who=None)
        if request.method != "POST":
            raise BadRequest(f"{request.method} is not allowed on /login")
        await self._checked_post(request)
        form = await request.post()
        key = str(form.get("api_key") or "").strip()
        nxt = str(form.get("next") or nxt)
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        transport = request.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        try:
            if not key:
                raise Unauthorized("enter an API key")
            self.ops.authenticate(key, peer=request.remote, tls=tls)
        except Unauthorized as err:
            await _throttled(err)
            return self.render(request, "login.html", http_status=401, next=nxt, message=str(err), who=None)
        raise Redirect(nxt, cookie=key)


async def _throttled(err: Unauthorized) -> None:
    """Repeated failed sign-ins from one address are answered later, as on every interface
    (docs/security.md): this request waits, the shard's loop does not."""
    delay = getattr(err, "delay_s", 0.0)
    if delay:
        await asyncio.sleep(delay)


__all__ = ["Dashboard", "Redirect", "COOKIE"]
