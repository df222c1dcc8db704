"""The `shardq` command line. Errors print one clear line and exit non-zero.

`serve`, `config` and `bench` live here; the client commands (submit, status, cancel, list,
stats, workers, dlq) in ``shardq.cli_commands``; `keys` in ``shardq.keys_cli``; `worker` in ``shardq.worker.cli``, imported
only when that command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shardq import __version__
from shardq.config import FLAG_TO_KEY, default_of, dump_config, load_config
from shardq.errors import ConfigError
from shardq.keys_cli import add_keys_command
from shardq.keys_cli import run as run_keys_command

# How each serve flag parses; every one overrides config file and environment.
_FLAG_TYPES: dict[str, Any] = {
    "--host": str, "--port": int, "--data-dir": str, "--shards": str,
    "--sync": str, "--lease-timeout-ms": int, "--heartbeat-interval-ms": int,
    "--queue-depth-threshold": int, "--max-connections": int, "--connection-timeout-ms": int,
    "--metrics-port": int, "--http-port": int, "--grpc-port": int,
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config.yaml to read (default: none)")
    for flag, key in FLAG_TO_KEY.items():
        # default=None means "not given" (the file and environment then decide); the help shows
        # the built-in default, read from the config schema so it cannot drift.
        default = str(default_of(key)).replace("%", "%%")  # argparse formats help with %
        p.add_argument(flag, type=_FLAG_TYPES.get(flag, str), default=None, metavar="V",
                       help=f"overrides {key} (default: {default})")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out[key] = value
    if "api.grpc_port" in out:
        out["api.grpc_enabled"] = True  # --grpc-port N: serve the gRPC API there (docs/grpc.md)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardq", description="shardq task-queue broker")
    parser.add_argument("--version", action="version", version=f"shardq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker")
    _add_config_flags(serve)

    config = sub.add_parser("config", help="check or show the effective configuration")
    config.add_argument("action", choices=("check", "show"))
    _add_config_flags(config)

    bench = sub.add_parser("bench", help="run the lifecycle benchmarks (shardq/bench/)")
    from shardq.bench import add_arguments  # the benchmark owns its arguments
    add_arguments(bench)

    from shardq.cli_commands import add_client_commands, common_options
    dlq = add_client_commands(sub)
    from shardq.cli_controls import add_control_commands
    add_control_commands(sub)
    from shardq.schedules_cli import add_schedule_commands
    add_schedule_commands(sub)
    from shardq.cli_workers import add_worker_control  # `shardq workers quiet|stop ID`
    add_worker_control(sub.choices["workers"], [common_options()])
    from shardq.cli_insight import add_insight_commands
    add_insight_commands(sub)
    from shardq.cli_triage import add_triage_commands  # as cli_commands: not for `serve`
    add_triage_commands(sub, dlq)
    add_keys_command(sub)

    # The worker owns its arguments; main() hands them to _run_worker.
    sub.add_parser("worker", help="run tasks: shardq worker MODULE:APP (shardq worker --help)",
                   add_help=False)
    return parser


def _run_worker(rest: list[str]) -> int:
    import importlib
    try:
        worker_cli = importlib.import_module("shardq.worker.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("shardq.worker", "shardq.worker.cli"):
            raise
        print("shardq: the worker runtime is not installed (no module shardq.worker.cli)",
              file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog="shardq worker", description="run a shardq worker")
    worker_cli.add_arguments(parser)
    return int(worker_cli.run(parser.parse_args(rest)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:  # the top level has no options that take a value
        return _run_worker(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return run_keys_command(args)
    if getattr(args, "handler", None) is not None:
        from shardq.cli_commands import run as run_client_command
        return run_client_command(args)
    try:
        if args.command == "bench":
            from shardq.bench import run
            return run(args)
        cfg = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"shardq: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from shardq.server.supervisor import serve
        return serve(cfg)
    if args.command == "config":
        if args.action == "show":
            sys.stdout.write(dump_config(cfg))
        else:
            print("config ok")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
