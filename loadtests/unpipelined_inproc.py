"""The shard's own CPU per unpipelined request, without sockets: what the Python request path and
the store cost, apart from the kernel's share and from a load generator on the same cores.

    python loadtests/unpipelined_inproc.py --turns 2000 --per-turn 4 [--rounds 3]

One ShardServer on a temp data dir (the real RocksDB store, sync=interval) and eight Sessions on
fake transports, as compare.py's unpipelined row has them: four producers (SUBMIT of one task) and
four consumers (CLAIM max 1, then RESULT of what it claimed), one request each per round, run
``--per-turn`` requests per event-loop turn (the real run does 3-4 a turn: perf showed 0.28
epoll_wait per request). Prints the shard's process CPU per request (decode, operation, answer,
group commit with its RocksDB write), and the store's commit alone.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from typing import Any

import uvloop

from shardq.config import load_config
from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, MsgType, encode
from shardq.server.operations import Operations
from shardq.server.session import Session
from shardq.server.shard import ShardServer


class FakeTransport:
    """What a Session asks of uvloop's transport; writes are kept for the consumers to read."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.closing = True


async def run(turns: int, per_turn: int) -> tuple[float, float]:
    data_dir = tempfile.mkdtemp(prefix="shardq-inproc-")
    cfg = load_config(None, overrides={"persistence.data_dir": data_dir,
                                       "broker.queue_depth_threshold": 10_000_000})
    shard = ShardServer(cfg, data_dir, 1, 0, None)
    shard.start(asyncio.get_running_loop())
    commit_cpu = [0.0]
    commit = shard.store.commit

    def timed_commit() -> int:
        t0 = time.process_time()
        try:
            return commit()
        finally:
            commit_cpu[0] += time.process_time() - t0

    shard.store.commit = timed_commit  # type: ignore[method-assign]
    ops = Operations(shard)
    sessions = [Session(shard, ops) for _ in range(8)]
    transports = [FakeTransport() for _ in sessions]
    for session, transport in zip(sessions, transports):
        session.connection_made(transport)  # type: ignore[arg-type]
        session.data_received(encode(MsgType.HELLO, {"rid": 0, "protocol": 1}))
    await asyncio.sleep(0)
    for transport in transports:
        transport.out.clear()
    submit = [encode(MsgType.SUBMIT, {"rid": i + 1, "tasks": [{"type": "bench", "payload_len": 100}]},
                     b"x" * 100) for i in range(64)]
    claim = [encode(MsgType.CLAIM, {"rid": i + 1, "worker_id": "w", "max": 1, "wait_ms": 200})
             for i in range(64)]
    decoder = FrameDecoder(accept=RESPONSE_TYPES)
    claimed: list[dict[str, Any] | None] = [None] * 4
    cpu = 0.0
    requests = 0
    for i in range(turns):
        frames = [(s, submit[i % 64]) for s in sessions[:4]]
        for j, s in enumerate(sessions[4:]):
            task = claimed[j]
            frames.append((s, claim[i % 64] if task is None else encode(MsgType.RESULT, {
                "rid": i % 64 + 1, "worker_id": "w",
                "results": [{"id": task["id"], "attempt": task["attempt"], "status": "completed"}]})))
        t0 = time.process_time()
        for k in range(0, len(frames), per_turn):
            for s, frame in frames[k:k + per_turn]:
                s.data_received(frame)
            await asyncio.sleep(0)  # the group commit runs at the end of the turn
        cpu += time.process_time() - t0
        requests += len(frames)
        for j, transport in enumerate(transports[4:]):
            if claimed[j] is not None:
                claimed[j] = None
            else:
                for data in transport.out:
                    decoder.feed(data)
                    msg = decoder.next()
                    tasks = msg.header.get("tasks") if msg is not None and hasattr(msg, "header") else None
                    claimed[j] = tasks[0] if tasks else None
        for transport in transports:
            transport.out.clear()
    shard.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return cpu / requests * 1e6, commit_cpu[0] / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=2000)
    ap.add_argument("--per-turn", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    for _ in range(args.rounds):
        per_request, commit = uvloop.run(run(args.turns, args.per_turn))
        print(f"{per_request:.2f} us of shard CPU per request ({args.turns * 8} requests, "
              f"{args.per_turn} a turn); store.commit {commit:.2f} us of it", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
