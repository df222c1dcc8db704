"""Decode + validate alone, no socket: today's reference path (orjson.loads, the rid check and
protocol/requests.py) against the one-pass path (protocol/typed.py), on the lifecycle's requests:
a SUBMIT of 100 tasks, a CLAIM, a RESULT of 100 completions.

    python loadtests/decode_bench.py [--rounds 9] [--n 1000]

Rounds alternate the two paths; the medians and the median of the per-round ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from shardq.protocol import requests as rq
from shardq.protocol import typed
from shardq.protocol.frames import MAX_PAYLOAD, MsgType

SUBMIT = orjson.dumps({"rid": 12345, "tasks": [{"type": "bench", "payload_len": 100}] * 100})
SUBMIT_BLOB = b"x" * 10_000
RESULT = orjson.dumps({"rid": 12346, "worker_id": "bench-consumer-0", "results": [
    {"id": str(uuid.uuid4()), "attempt": 1, "status": "completed", "result_len": 0} for _ in range(100)]})
CLAIM = orjson.dumps({"rid": 12347, "worker_id": "bench-consumer-0", "max": 100, "wait_ms": 500})


def reference(mtype: MsgType, head: bytes, blob: bytes) -> Any:
    header = orjson.loads(head)
    rq.parse_rid(header)
    rq.check_blob(mtype, header, blob)
    if mtype is MsgType.SUBMIT:
        return rq.parse_submit(header, blob, MAX_PAYLOAD)
    if mtype is MsgType.CLAIM:
        return rq.parse_claim(header)
    return rq.parse_result(header, blob)


def one_pass(mtype: MsgType, head: bytes, blob: bytes) -> Any:
    if mtype is MsgType.SUBMIT:
        return typed.submit(head, blob, MAX_PAYLOAD)
    if mtype is MsgType.CLAIM:
        return typed.claim(head, blob)
    return typed.result(head, blob)


def timed(fn: Callable[..., Any], n: int, *args: Any) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    for name, mtype, head, blob in [("SUBMIT x100", MsgType.SUBMIT, SUBMIT, SUBMIT_BLOB),
                                    ("CLAIM", MsgType.CLAIM, CLAIM, b""),
                                    ("RESULT x100", MsgType.RESULT, RESULT, b"")]:
        assert one_pass(mtype, head, blob) is not None
        rounds = [(timed(reference, a.n, mtype, head, blob), timed(one_pass, a.n, mtype, head, blob))
                  for _ in range(a.rounds)]
        ref = statistics.median(r[0] for r in rounds)
        new = statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[1] / r[0] for r in rounds)
        print(f"{name:12s} reference {ref:8.2f} us   one pass {new:8.2f} us   ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
