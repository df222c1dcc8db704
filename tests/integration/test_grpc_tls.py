"""The gRPC API under mutual TLS, with the certificates of the other listeners, against a real
2-shard server: a client with a certificate the CA signed works end to end (the gateway's own
connections to the shards are mutual TLS too), one without a certificate, or without TLS, does
not get in; and the gateway is drained with the rest by SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from grpc_helpers import Api, grpc_port, serving, until
from tlsfiles import TlsFiles

from shardq.testing import ServerProcess
from shardq.v1 import task_pb2, tasks_pb2, workers_pb2


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpc-tls")
    files = TlsFiles(d / "certs")
    srv = ServerProcess(str(d / "data"), ["--shards", "2", "--grpc-port", "0"],
                        env=files.server_env(mutual=True)).start()
    yield srv, files
    srv.kill()


def _channel(srv: ServerProcess, files: TlsFiles, with_cert: bool = True) -> grpc.Channel:
    with open(files.ca_file, "rb") as f:
        ca = f.read()
    key = cert = None
    if with_cert:
        pair = files.client()
        with open(pair.key, "rb") as f:
            key = f.read()
        with open(pair.cert, "rb") as f:
            cert = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"localhost:{grpc_port(srv)}", creds)


def test_mutual_tls_round_trip(tls_server) -> None:
    srv, files = tls_server
    api = Api(_channel(srv, files))
    until(lambda: serving(api), what="health SERVING over TLS")
    ids = api.t("SubmitBatch", tasks_pb2.SubmitBatchRequest(tasks=[task_pb2.TaskSpec(type="tls.a", payload=b"x")
                                                                   for _ in range(4)])).ids
    claimed = api.w("Claim", workers_pb2.ClaimRequest(worker_id="tw", max=4, wait_ms=2000, types=["tls.a"])).tasks
    assert sorted(c.task.id for c in claimed) == sorted(ids)
    answers = api.w("ReportResults", workers_pb2.ReportResultsRequest(worker_id="tw", results=[
        workers_pb2.TaskResult(id=c.task.id, attempt=c.task.attempt, completed=b"ok") for c in claimed])).answers
    assert all(a.ok for a in answers)
    got = api.t("GetTasks", tasks_pb2.GetTasksRequest(ids=ids, with_result=True)).tasks
    assert {t.task.shard for t in got} <= {0, 1} and all(t.task.result == b"ok" for t in got)


@pytest.mark.parametrize("how", ["no client certificate", "plaintext"])
def test_refused_without_a_client_certificate_or_tls(tls_server, how: str) -> None:
    srv, files = tls_server
    channel = (_channel(srv, files, with_cert=False) if how == "no client certificate"
               else grpc.insecure_channel(f"127.0.0.1:{grpc_port(srv)}"))
    with pytest.raises(grpc.RpcError) as err:
        Api(channel).t("GetStats", tasks_pb2.GetStatsRequest(), timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_sighup_reloads_the_certificate_for_new_handshakes(tls_server) -> None:
    srv, files = tls_server
    api = Api(_channel(srv, files))
    assert api.t("GetStats", tasks_pb2.GetStatsRequest()).stats["totals"] is not None
    files.issue("server", "127.0.0.1", "localhost")  # a new certificate in the same files
    os.kill(srv.pid, signal.SIGHUP)  # the supervisor passes it on to every child

    def reloaded() -> bool:
        # grpc reads new files at a handshake: a new channel makes one.
        fresh = Api(_channel(srv, files))
        assert fresh.t("GetStats", tasks_pb2.GetStatsRequest(), timeout=5).stats["totals"] is not None
        fresh.channel.close()
        return any("TLS certificate reloaded" in line and " grpc " in line for line in srv.stderr_lines)

    until(reloaded, what="the gateway's reload")
    assert api.t("GetStats", tasks_pb2.GetStatsRequest()).stats["totals"] is not None  # kept


def test_sigterm_drains_the_gateway_too(tls_server) -> None:
    """Open streams end UNAVAILABLE at once (the claim stream's task goes back), exit 0."""
    srv, files = tls_server
    api = Api(_channel(srv, files))
    tid = api.t("Submit", tasks_pb2.SubmitRequest(task=task_pb2.TaskSpec(type="tls.drain"))).id
    stream = api.workers.ClaimStream(workers_pb2.ClaimStreamRequest(worker_id="dw", max_in_flight=1,
                                                                     types=["tls.drain"]), timeout=60)
    assert [t.task.id for t in next(stream).tasks] == [tid]
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
    assert srv.proc.wait(30) == 0
    assert time.monotonic() - started < 10  # DRAIN_S is not waited out
    until(lambda: any("gRPC gateway stopped" in line for line in srv.stderr_lines), what="the gateway's last line")
    assert any("gRPC gateway stopped" in line for line in srv.stderr_lines)
