"""TLS against plaintext in the same run: the batched lifecycle and SUBMIT latency of `shardq bench`.

    PYTHONPATH=$PWD python loadtests/tls_bench.py --rounds 3 --tasks 100000 --latency-tasks 5000

Each round starts a fresh plaintext server and a fresh TLS server (trustme certificates, 1 shard
unless --shards), one after the other, with the same flags, and runs `shardq bench --scenario
lifecycle --scenario submit-latency --server URL --server-pid PID --json` against each; the
benchmark's clients read SHARDQ_TLS_CA for shardqs:// URLs. Rounds alternate which goes first, so
a machine that warms up or gets busier mid-run does not favour one side. Prints one line per
run, then the medians and the TLS/plaintext ratios (the target: TLS keeps >= 0.8x throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

from shardq.testing import ServerProcess


def certificates(dir: Path) -> dict[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = {name: str(dir / name) for name in ("ca.pem", "server.crt", "server.key")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    leaf.cert_chain_pems[0].write_to_path(paths["server.crt"])
    leaf.private_key_pem.write_to_path(paths["server.key"])
    return paths


def run_one(tls: bool, files: dict[str, str], args: argparse.Namespace, tmp: Path, n: int) -> dict[str, dict]:
    env = {"SHARDQ_API__TLS_ENABLED": "true", "SHARDQ_API__TLS_CERT_FILE": files["server.crt"],
           "SHARDQ_API__TLS_KEY_FILE": files["server.key"]} if tls else {}
    srv = ServerProcess(str(tmp / f"data-{n}-{'tls' if tls else 'plain'}"),
                        ["--shards", str(args.shards), "--queue-depth-threshold", "10000000"], env=env)
    srv.start()
    try:
        url = f"{'shardqs' if tls else 'shardq'}://127.0.0.1:{srv.port}"
        results = {}
        for scenario, tasks in (("lifecycle", args.tasks), ("submit-latency", args.latency_tasks)):
            out = subprocess.run(
                [sys.executable, "-m", "shardq", "bench", "--scenario", scenario, "--server", url,
                 "--server-pid", str(srv.pid), "--tasks", str(tasks), "--batch", str(args.batch),
                 "--producers", str(args.producers), "--consumers", str(args.consumers), "--json"],
                capture_output=True, text=True, timeout=600,
                env={**os.environ, "SHARDQ_TLS_CA": files["ca.pem"]})
            if out.returncode != 0:
                raise SystemExit(f"bench failed ({'tls' if tls else 'plain'} {scenario}):\n{out.stderr}")
            results[scenario] = json.loads(out.stdout)["results"][0]
        return results
    finally:
        srv.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=100_000, help="lifecycle tasks per run")
    p.add_argument("--latency-tasks", type=int, default=5_000, help="submit-latency tasks per run")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--shards", type=int, default=1)
    args = p.parse_args()
    runs: dict[bool, list[dict[str, dict]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="shardq-tls-bench-") as tmp:
        files = certificates(Path(tmp))
        for n in range(args.rounds):
            for tls in ((False, True) if n % 2 == 0 else (True, False)):
                r = run_one(tls, files, args, Path(tmp), n)
                runs[tls].append(r)
                life, lat = r["lifecycle"], r["submit-latency"]
                print(f"round {n + 1} {'tls  ' if tls else 'plain'}: lifecycle "
                      f"{life['completed_per_s']:>9,.0f} tasks/s (batch p50 {life['p50_us']:,.0f} us)"
                      f"  submit p50 {lat['p50_us']:,.0f} us p99 {lat['p99_us']:,.0f} us "
                      f"({lat['submits_per_s']:,.0f}/s)", flush=True)

    def med(tls: bool, scenario: str, key: str) -> float:
        return statistics.median(r[scenario][key] for r in runs[tls])

    print(f"\nmedians of {args.rounds} rounds (batch {args.batch}, {args.producers} producer(s), "
          f"{args.consumers} consumer(s), {args.shards} shard(s)):")
    for label, scenario, key in (
            ("lifecycle tasks/s", "lifecycle", "completed_per_s"),
            ("lifecycle SUBMIT batch p50 us", "lifecycle", "p50_us"),
            ("single SUBMIT p50 us", "submit-latency", "p50_us"),
            ("single SUBMIT p99 us", "submit-latency", "p99_us"),
            ("single SUBMITs/s", "submit-latency", "submits_per_s")):
        plain, tls = med(False, scenario, key), med(True, scenario, key)
        print(f"  {label:<32} plain {plain:>10,.1f}   tls {tls:>10,.1f}   tls/plain {tls / plain:.2f}x")


if __name__ == "__main__":
    main()
