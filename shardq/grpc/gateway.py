"""The gRPC gateway process: serves proto/shardq/v1/shardq.proto on ``api.grpc_host:grpc_port``
with grpc.health.v1 and server reflection, and talks to the shards as a client of the broker's
own port (upstream.py). The supervisor starts it after the shards, restarts it when it dies, and
drains it with the acceptor.

Rules:
1. It binds its port itself (grpcio cannot adopt a socket) with SO_REUSEPORT, which grpc sets by
   default, so a restarted gateway binds the port of the one that died at once. It tells the
   supervisor the port it bound (``--grpc-port 0``: any free one; a restart asks for that one).
2. TLS: the certificate and key of the other listeners; with ``api.tls_ca_file``, clients must
   present a certificate it signed (mutual TLS). SIGHUP reads the files again for new handshakes
   (grpc's dynamic credentials), as every listener of the broker does.
3. Health: the overall service ("") and each shardq service are SERVING once every shard answers
   a PING, NOT_SERVING while any does not; checked every second (upstream.py rule 4).
4. SIGTERM: stop taking calls, end the streams (UNAVAILABLE: claim streams release what they
   held), let unary calls in flight finish for up to ``DRAIN_S``, close the clients, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shardq.config import ApiConfig, Config
from shardq.grpc.calls import Gate
from shardq.grpc.handlers import TasksService, WorkersService
from shardq.grpc.insight import InsightService
from shardq.grpc.operators import OperatorsService
from shardq.grpc.upstream import HEALTH_EVERY_S, Upstream, all_serve
from shardq.process import EXIT_BIND, EXIT_CONFIG, start_child
from shardq.protocol.frames import MAX_FRAME
from shardq.v1 import (
    insight_pb2,
    insight_pb2_grpc,
    operators_pb2,
    operators_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

log = logging.getLogger("shardq.grpc")

DRAIN_S = 10.0
MESSAGE_MAX = MAX_FRAME + 64 * 1024  # a frame's worth, plus protobuf's field overhead
SERVICES = tuple(s.full_name for m in (tasks_pb2, workers_pb2, operators_pb2, insight_pb2)
                 for s in m.DESCRIPTOR.services_by_name.values())


class Certificates:
    """Rule 2: the certificate configuration grpc asks for at each handshake; new after SIGHUP."""

    def __init__(self, api: ApiConfig) -> None:
        self.api = api
        self.stale = False
        self.current = self._read()

    def _read(self) -> Any:
        api = self.api
        assert api.tls_cert_file is not None and api.tls_key_file is not None
        with open(api.tls_cert_file, "rb") as f:
            cert = f.read()
        with open(api.tls_key_file, "rb") as f:
            key = f.read()
        ca = None
        if api.tls_ca_file is not None:
            with open(api.tls_ca_file, "rb") as f:
                ca = f.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> Any:
        """grpc's fetcher: a new configuration after a reload, else None (keep the last)."""
        if not self.stale:
            return None
        self.stale = False
        try:
            self.current = self._read()
        except OSError as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return None
        log.info("TLS certificate reloaded from %s", self.api.tls_cert_file)
        return self.current

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.current, self.fetch, require_client_authentication=self.api.tls_ca_file is not None)


async def _watch_shards(checker: Any, run_dir: str, shards: int) -> None:
    """Rule 3."""
    serving: bool | None = None
    while True:
        now = await all_serve(run_dir, shards)
        if now != serving:
            status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *SERVICES):
                await checker.set(name, status)
            log.info("health: %s", "SERVING (every shard answers)" if now else "NOT_SERVING (a shard does not answer)")
            serving = now
        await asyncio.sleep(HEALTH_EVERY_S)


async def serve(cfg: Config, tcp_port: int, run_dir: str, shards: int, grpc_port: int, ready: Any) -> int:
    api = cfg.api
    upstream = Upstream(api, cfg.broker.host, tcp_port)
    gate = Gate(upstream, cfg.auth, api.tls_enabled)
    tasks, workers = TasksService(gate), WorkersService(gate)
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        # grpc's default 4 MiB would refuse what the protocol takes (a 10 MiB payload, a batch up to
        # a frame); the shards' own limits then answer with the protocol's errors.
        ("grpc.max_receive_message_length", MESSAGE_MAX),
        ("grpc.max_send_message_length", MESSAGE_MAX),
    ])
    tasks_pb2_grpc.add_TasksServicer_to_server(tasks, server)
    workers_pb2_grpc.add_WorkersServicer_to_server(workers, server)
    operators_pb2_grpc.add_OperatorsServicer_to_server(OperatorsService(gate), server)
    insight_pb2_grpc.add_InsightServicer_to_server(InsightService(gate), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    certificates = Certificates(api) if api.tls_enabled else None
    address = f"{'[' + api.grpc_host + ']' if ':' in api.grpc_host else api.grpc_host}:{grpc_port}"
    try:
        if certificates is not None:
            bound = server.add_secure_port(address, certificates.credentials())
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error("cannot listen for gRPC on %s: %s", address, exc)
        return EXIT_BIND
    if not bound:
        log.error("cannot listen for gRPC on %s", address)
        return EXIT_BIND
    for name in ("", *SERVICES):
        await checker.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if certificates is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: setattr(certificates, "stale", True))
    watcher = loop.create_task(_watch_shards(checker, run_dir, shards))
    log.info("gRPC API on %s%s (services: %s)", address.rsplit(":", 1)[0] + f":{bound}",
             " with TLS" + (" (mutual)" if api.tls_ca_file else "") if certificates else "", ", ".join(SERVICES))
    if ready is not None:
        ready.send({"grpc_port": bound})
        ready.close()
    await stop.wait()
    log.info("draining: no new gRPC calls; up to %.0f s for those in flight", DRAIN_S)
    watcher.cancel()
    gate.draining.set()  # the streams end now; unary calls in flight finish
    await server.stop(DRAIN_S)
    await workers.close()
    await upstream.close()
    log.info("gRPC gateway stopped")
    return 0


def run(cfg: Config, tcp_port: int, run_dir: str, shards: int, grpc_port: int, ready: Any = None) -> None:
    """The process: exits 0 after a drain, EXIT_BIND when the port cannot be bound."""
    start_child("grpc", cfg.monitoring)
    try:
        code = uvloop.run(serve(cfg, tcp_port, run_dir, shards, grpc_port, ready))
    except (OSError, ValueError) as exc:  # e.g. a TLS file that went away since the check
        log.error("gRPC gateway cannot start: %s", exc)
        code = EXIT_CONFIG
    with contextlib.suppress(Exception):
        logging.shutdown()
    sys.exit(code)
