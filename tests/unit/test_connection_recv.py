"""The blocking Connection reads into one buffer it reuses: answers larger than the buffer, and
answers that arrive over several reads, come out whole and unmixed."""

from __future__ import annotations

import socket
import threading

from shardq.client.connection import RECV_BUFFER, Connection
from shardq.protocol.frames import FrameDecoder, MsgType, encode


def test_answers_larger_than_the_buffer_and_back_to_back_stay_whole() -> None:
    big = bytes(range(256)) * (3 * RECV_BUFFER // 256 + 7)  # several reads' worth
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                decoder = FrameDecoder()
                rids: list[int] = []
                while len(rids) < 3:
                    decoder.feed(conn.recv(65536))
                    while (msg := decoder.next()) is not None:
                        rids.append(msg.rid)  # type: ignore[union-attr]
                # All three answers in one stream, the big one in the middle.
                conn.sendall(encode(MsgType.ACK, {"rid": rids[0], "n": 1}) +
                             encode(MsgType.ACK, {"rid": rids[1], "n": 2}, big) +
                             encode(MsgType.ACK, {"rid": rids[2], "n": 3}, b"tail"))

        server = threading.Thread(target=serve)
        server.start()
        with Connection("127.0.0.1", port, timeout=10) as c:
            rids = [c.send(MsgType.PING, {}) for _ in range(3)]
            third = c.wait_for(rids[2])  # the first two are kept while we read past them
            first = c.wait_for(rids[0])
            second = c.wait_for(rids[1])
        server.join(10)
    assert (first.header["n"], first.blob) == (1, b"")
    assert second.header["n"] == 2 and second.blob == big
    assert (third.header["n"], third.blob) == (3, b"tail")
