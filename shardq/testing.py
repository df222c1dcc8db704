"""Start real `shardq serve` processes for tests and benchmarks.

Each server runs in its own process group on port 0 with its own data dir; the
port is read back from its ``READY port=N`` line; ``stop``/``kill`` end the
whole group, so nothing outlives a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from shardq.client.connection import Connection


class ServerProcess:
    def __init__(self, data_dir: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env
        self.host = host
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self.ready_fields: dict[str, str] = {}
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []

    @property
    def url(self) -> str:
        return f"shardq://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0, port: int | None = None) -> ServerProcess:
        # /metrics on any free port unless asked otherwise: servers of parallel tests must not
        # fight over 9091 (and a restart asks for the port it had).
        metrics = [] if "--metrics-port" in self.args else ["--metrics-port", str(self.metrics_port)]
        # The HTTP API likewise: any free port, the same one on a restart.
        metrics += [] if "--http-port" in self.args else ["--http-port", str(self.http_port)]
        cmd = [sys.executable, "-m", "shardq", "serve", "--host", self.host,
               "--port", str(self.port if port is None else port), "--data-dir", self.data_dir,
               *metrics, *self.args]
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env=env)
        self.stdout_lines, self.stderr_lines = [], []
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines),
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(5)
                time.sleep(0.1)
                raise RuntimeError(f"server exited with {self.proc.returncode} before READY:\n"
                                   + "".join(self.stderr_lines[-30:]))
            self.stdout_lines.append(line)
            if line.startswith("READY "):
                fields = dict(kv.split("=", 1) for kv in line.split()[1:])
                self.port = int(fields["port"])
                self.ready_fields = fields
                if "metrics_port" in fields:
                    self.metrics_port = int(fields["metrics_port"])
                if "http_port" in fields:
                    self.http_port = int(fields["http_port"])
                threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines),
                                 daemon=True).start()
                return self
        self.kill()
        raise RuntimeError("server did not print READY in time")

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line)

    @property
    def http_url(self) -> str:
        """The HTTP API's base URL (``http://host:port``)."""
        return f"http://{self.host}:{self.http_port}"

    def connect(self, timeout: float = 30.0) -> Connection:
        return Connection(self.host, self.port, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def restart(self, timeout: float = 60.0) -> ServerProcess:
        """Start again on the same data dir and (when free) the same port."""
        return self.start(timeout, port=self.port)
