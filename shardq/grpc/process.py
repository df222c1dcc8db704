"""The gateway's entry point as the supervisor sees it: importable without grpcio.

grpcio is the optional extra ``shardq[grpc]`` (a large wheel most brokers do not need), so the
supervisor imports only this module; the gateway itself (gateway.py, which imports grpc) is loaded
in the child process, after ``grpc_missing`` said everything it needs is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# The distributions the gateway imports, by the module they provide.
NEEDED = {"grpc": "grpcio", "grpc_health": "grpcio-health-checking",
          "grpc_reflection": "grpcio-reflection", "grpc_status": "grpcio-status",
          "google.protobuf": "protobuf"}
INSTALL = "pip install 'shardq[grpc]'"


def grpc_missing() -> str:
    """"" when the gRPC API can run; else what to install, as one line for a person."""
    missing = []
    for module, dist in NEEDED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # google.protobuf when google is not there at all
            found = False
        if not found:
            missing.append(dist)
    if not missing:
        return ""
    return (f"api.grpc_enabled (or --grpc-port) needs {', '.join(missing)}, which is not installed: "
            f"{INSTALL} (or set api.grpc_enabled: false)")


def gateway_main(*args: Any) -> None:
    """The child process: gateway.run(cfg, tcp_port, run_dir, shards, grpc_port, ready)."""
    importlib.import_module("shardq.grpc.gateway").run(*args)
