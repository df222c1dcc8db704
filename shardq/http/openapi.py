"""The OpenAPI 3.1 document of the HTTP API, rendered from the route table and the Structs.

Rule: nothing here describes a route by hand. Paths, parameters, bodies, answers and errors come
from routes.ROUTES; every schema comes from schema.py through ``msgspec.json.schema_components``,
the same Structs that validate the requests.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec

from shardq import __version__
from shardq.http import schema as s
from shardq.http.routes import COMMON_ERRORS, PARAM_DOCS, ROUTES, Route, path_params
from shardq.schedule_specs import NAME_REGEX

REF = "#/components/schemas/{name}"
PATH_SCHEMAS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
    "worker_id": {"type": "string", "minLength": 1, "maxLength": 255},
    "task_type": {"type": "string", "minLength": 1, "maxLength": 255},
    "name": {"type": "string", "pattern": NAME_REGEX},  # a schedule's
}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}
WWW_AUTHENTICATE = {"description": "`Bearer realm=\"shardq\"`", "schema": {"type": "string"}}
DESCRIPTION = """\
REST access to every operation of the shardq TCP protocol: producers submit and inspect tasks,
operators list, cancel, requeue and read stats, workers register, claim (long poll), report
results and heartbeat. Every shard serves it; a request about a task reaches its owner shard in
at most one hop.

Errors are RFC 9457 problems (`application/problem+json`) whose `code` is the TCP protocol's
error code. With auth on, send `Authorization: Bearer <api key>`.
"""


def build_document() -> dict[str, Any]:
    structs: list[type] = [s.Problem]
    for route in ROUTES:
        for t in (route.body, route.answer, route.query):
            if isinstance(t, type) and issubclass(t, msgspec.Struct):
                structs.append(t)
    refs, components = msgspec.json.schema_components(structs, ref_template=REF)
    ref_of = dict(zip(structs, refs))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref_of, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "shardq HTTP API", "version": __version__, "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": "/"}],
        "tags": [{"name": "tasks", "description": "Producers: submit and inspect tasks."},
                 {"name": "workers", "description": "Workers: register, claim, report, heartbeat."},
                 {"name": "operators", "description": "Stats and the worker registry."},
                 {"name": "schedules", "description": "Periodic schedules: each tick submits one task."},
                 {"name": "operations", "description": "Health checks and this document."}],
        "paths": paths,
        "components": {
            "schemas": {k: v for k, v in components.items()
                        if k not in {getattr(r.query, "__name__", "") for r in ROUTES}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key of `auth.api_keys` "
                                                          "(only when auth is enabled)."}},
        },
    }


def _operation(route: Route, ref_of: dict[type, Any], components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation, "summary": route.summary, "tags": [route.tag]}
    doc = route.body.__doc__ if route.body is not None else None
    if doc:
        op["description"] = " ".join(doc.split())
    params = [{"name": name, "in": "path", "required": True, "description": PARAM_DOCS[name],
               "schema": PATH_SCHEMAS[name]} for name in path_params(route)]
    if route.query is not None:
        q = components[route.query.__name__]
        required = set(q.get("required", ()))
        for name, schema in q["properties"].items():
            params.append({"name": name, "in": "query", "required": name in required,
                           "description": PARAM_DOCS[name], "schema": schema})
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required,
                             "content": {"application/json": {"schema": ref_of[route.body]}}}
    answer = {"schema": ref_of[route.answer]} if route.answer in ref_of else {"schema": {"type": "object"}}
    responses: dict[str, Any] = {str(route.status): {"description": HTTPStatus(route.status).phrase,
                                                     "content": {"application/json": answer}}}
    statuses = set(route.errors) | ({400, 413} if route.body is not None else set())
    if route.query is not None or path_params(route):
        statuses.add(400)
    if route.auth:
        statuses |= set(COMMON_ERRORS)
        op["security"] = [{}, {"bearer": []}]
    else:
        op["security"] = [{}]
    for status in sorted(statuses):
        entry: dict[str, Any] = {"description": HTTPStatus(status).phrase,
                                 "content": {"application/problem+json": {"schema": ref_of[s.Problem]}}}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": RETRY_AFTER}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
        if route.operation == "readyz" and status == 503:
            entry["content"] = {"application/json": {"schema": ref_of[s.Readiness]}}
            entry.pop("headers", None)
        responses[str(status)] = entry
    op["responses"] = responses
    return op
