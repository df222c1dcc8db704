"""The HTTP API (REST v1 under /api/v1, an OpenAPI 3.1 document, a browsable reference).

Every shard serves it, as it serves the TCP protocol: the acceptor hands HTTP connections to
shards (server.py), each request is translated into one call of the operations layer (api.py),
whose routing reaches a task's owner shard in at most one hop. routes.py is the table of routes;
schema.py the typed bodies that both validate requests and make the document (openapi.py);
problems.py turns errors into RFC 9457 problems. docs/http-api.md describes it for users.
"""
