"""The shard and its disk: a failed write, resuming, the free-space watermark (shard.py rule 5;
docs/architecture.md, "A full disk").

``ShardDisk`` is a mixin of ``ShardServer``: these methods read and set the shard's own state
(its outbox, its engine, its timers), and the group commit calls ``_write_failed`` in the middle
of a flush, so they are the shard's methods kept in a file of their own.
"""

from __future__ import annotations

import logging
import os
import time

from shardq.clock import now_ms
from shardq.errors import Unavailable
from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, Message, MsgType, encode_nack
from shardq.store.rocks import StoreWriteError

log = logging.getLogger("shardq.shard")

DISK_CHECK_PERIOD_S = 1.0  # statvfs of the data dir: the free-space watermark (not per request)
WRITE_PROBE_PERIOD_S = 0.5  # while writes fail: how often a small probe write tries the disk
# RocksDB resumes writes by itself once there is room to flush its memtable (its error handler
# retries; docs/architecture.md): the probe only notices when it has.
UNAVAILABLE_RETRY_MS = 1000  # retry_after_ms of the Unavailable answers while writes fail
DISK_ALARM_RETRY_MS = 5000  # retry_after_ms of a SUBMIT refused below the free-space watermark


class ShardDisk:
    def unavailable(self) -> Unavailable:
        return Unavailable(f"shard {self.index} cannot write to its data dir ({self.write_error}); "
                           "nothing of this request was stored, retry later", retry_after_ms=UNAVAILABLE_RETRY_MS)

    def check_writable(self) -> None:
        """Refuse a request that writes while the disk refuses writes (Unavailable)."""
        if not self.writable:
            raise self.unavailable()

    def check_submit_space(self) -> None:
        """Refuse a SUBMIT while writes fail or free space is below the watermark."""
        self.check_writable()
        if self.disk_alarm:
            self.disk_refused += 1
            raise Unavailable(
                f"shard {self.index}: {self.disk_free_bytes} bytes free on the data dir's disk, below "
                f"persistence.min_free_disk_bytes ({self.cfg.persistence.min_free_disk_bytes}); "
                "SUBMITs are refused until space is freed", retry_after_ms=DISK_ALARM_RETRY_MS)

    def _write_failed(self, exc: StoreWriteError) -> None:
        """A commit failed and wrote nothing: answer this turn's requests with Unavailable,
        rebuild memory from the disk, and refuse writes until a probe succeeds."""
        self.failed_flush_seq = self.flush_seq
        self.write_errors += 1
        self.write_error = _short(exc)
        t0 = time.perf_counter()
        reloaded = self.engine.reload(now_ms())
        took = time.perf_counter() - t0
        err = self.unavailable()
        outbox = []
        for session, frame in self._outbox:
            nack = _nack_instead(frame, err)
            if nack is not frame:
                session.out_pending += len(nack) - len(frame)  # send() takes the new length off
            outbox.append((session, nack))
        self._outbox = outbox
        if self.writable:
            self.writable = False
            self.unwritable_since = time.monotonic()
            log.error("writes failing: %s; refusing requests that write (Unavailable) until the disk "
                      "takes writes again; memory reloaded from disk in %.3f s (%s)", self.write_error, took,
                      " ".join(f"{k}={v}" for k, v in reloaded.items()))
            self._arm_probe()
            self._stats_at = 0.0  # the next REPORT carries the new state
        else:
            log.warning("write failed again: %s (memory reloaded in %.3f s)", self.write_error, took)

    def _arm_probe(self) -> None:
        if self.loop is not None and self._probe_timer is None and not self.closing:
            self._probe_timer = self.loop.call_later(WRITE_PROBE_PERIOD_S, self._probe_writes)

    def _probe_writes(self) -> None:
        self._probe_timer = None
        if self.closing or self.writable:
            return
        try:
            self.store.probe()
        except StoreWriteError as exc:
            self.write_error = _short(exc)
            self._arm_probe()
            return
        self._resume()

    def _resume(self) -> None:
        self.writable = True
        log.info("writes resumed after %.1f s: serving every request again",
                 time.monotonic() - self.unwritable_since)
        self._stats_at = 0.0
        self._after_change()  # what fell due meanwhile (retries, expired leases) runs now
        self._schedule_flush()

    def _check_disk(self) -> None:
        """The free-space watermark: statvfs of the data dir, once a DISK_CHECK_PERIOD_S."""
        try:
            st = os.statvfs(self.store.paths[0])
        except OSError as exc:
            log.warning("cannot check the free space of the data dir: %s", exc)
            return
        free = self.disk_free_bytes = st.f_bavail * st.f_frsize
        floor = self.cfg.persistence.min_free_disk_bytes
        alarm = free < floor
        if alarm != self.disk_alarm:
            self.disk_alarm = alarm
            self._stats_at = 0.0
            if alarm:
                log.warning("disk alarm: %d bytes free, below persistence.min_free_disk_bytes (%d): "
                            "refusing SUBMITs", free, floor)
            else:
                log.info("disk alarm over: %d bytes free: accepting SUBMITs again", free)


def _short(exc: BaseException) -> str:
    """RocksDB's message without the store path ("IO error: No space left on device: ...")."""
    cause = exc.__cause__ or exc
    return str(cause).split(": While ")[0][:200]


def _nack_instead(frame: bytes, err: Unavailable) -> bytes:
    """The NACK that replaces an ACK whose writes failed (same rid); other frames as they are."""
    if len(frame) < 5 or frame[4] != MsgType.ACK:
        return frame  # a NACK already, or the empty close marker
    decoder = FrameDecoder(accept=RESPONSE_TYPES)
    decoder.feed(frame)
    msg = decoder.next()
    rid = msg.rid if isinstance(msg, Message) else None
    return encode_nack(rid, err.code, err.message, **err.extra)
