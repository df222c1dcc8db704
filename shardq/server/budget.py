"""What the connections of one shard may hold in memory, together.

Rules:
1. Two byte budgets per shard. *Output*: answers built and not yet read by their client (queued
   for the group commit, in the transport's write buffer) plus an estimate reserved for every
   request answered later, from the moment it is decoded. *Input*: frames larger than SMALL_FRAME
   that have not arrived in full; a connection reserves its frame's announced length before we
   read more of it.
2. Over the output budget, the heaviest connections (holding more than an equal share) stop
   decoding until the total is back under it; the lightest, a client that reads its answers, go
   on. Over the input budget, a connection that announces a large frame waits, in order of
   arrival, for the frames admitted before it to complete (or their connections to close).
3. No I/O and no sockets here: a holder (a Session) is told to re-count itself (``recount``) or to
   go on (``wake``, ``granted``); the holder pauses and resumes its own transport.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from shardq.protocol.frames import MAX_FRAME, Message, MsgType

log = logging.getLogger("shardq.budget")

# Frames up to this size need no input reservation: every connection may hold one (a PING, a
# HELLO, a CLAIM, a small SUBMIT are never held up by someone else's large frames).
SMALL_FRAME = 64 * 1024
# While connections wait for the output budget, how often the write buffers are counted again
# (the kernel drains them without telling us).
RECOUNT_PERIOD_S = 0.02
# Give freed heap memory back to the OS (malloc_trim) at most this often, once a buffer of at
# least TRIM_AFTER bytes was freed.
TRIM_AFTER = 1024 * 1024
TRIM_DELAY_S = 0.5


class Holder(Protocol):
    def recount(self) -> int: ...
    def wake(self) -> None: ...
    def granted(self, n: int) -> None: ...


Later = Callable[[float, Callable[[], None]], object]  # loop.call_later


class OutputBudget:
    """Bytes held for answers by every connection of a shard; ``limit`` is the total allowed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.held: dict[Holder, int] = {}  # holders holding anything, and how much
        self.waiting: dict[Holder, None] = {}  # stopped for the total, in order
        self.call_later: Later | None = None
        self._recount_armed = False

    def set(self, holder: Holder, held: int) -> None:
        old = self.held.get(holder, 0)
        if held == old:
            return
        self.total += held - old
        if held:
            self.held[holder] = held
        else:
            self.held.pop(holder, None)
        if held < old and self.waiting and self.total <= self.limit:
            self._wake_all()

    def over(self, held: int) -> bool:
        """Whether a holder holding ``held`` bytes must stop: the total is over the limit and it
        holds more than an equal share (so the heaviest always stops, a reader never does)."""
        return self.total > self.limit and held * len(self.held) > self.limit

    def wait(self, holder: Holder) -> None:
        self.waiting[holder] = None
        self._arm_recount()

    def forget(self, holder: Holder) -> None:
        self.set(holder, 0)
        self.waiting.pop(holder, None)

    def _wake_all(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for holder in waiting:
            holder.wake()

    def _arm_recount(self) -> None:
        if not self._recount_armed and self.call_later is not None:
            self._recount_armed = True
            self.call_later(RECOUNT_PERIOD_S, self._recount)

    def _recount(self) -> None:
        self._recount_armed = False
        for holder in list(self.held):
            self.set(holder, holder.recount())
        if self.waiting:
            if self.total <= self.limit:
                self._wake_all()
            else:
                self._arm_recount()


class InputBudget:
    """Bytes reserved for large incomplete frames by every connection of a shard."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting: dict[Holder, int] = {}  # holder -> the length it waits to reserve, in order

    def take(self, holder: Holder, n: int) -> bool:
        """Reserve ``n`` bytes now (True) or queue ``holder`` for ``granted(n)`` later (False). A
        frame larger than the whole budget is admitted alone."""
        if not self.waiting and (self.used == 0 or self.used + n <= self.limit):
            self.used += n
            return True
        self.waiting[holder] = n
        return False

    def give_back(self, n: int) -> None:
        self.used -= n
        while self.waiting:
            holder, want = next(iter(self.waiting.items()))
            if self.used and self.used + want > self.limit:
                break
            del self.waiting[holder]
            self.used += want
            holder.granted(want)

    def forget(self, holder: Holder) -> None:
        self.waiting.pop(holder, None)


class HeapTrimmer:
    """Hands freed heap memory back to the OS after large buffers were freed: glibc keeps what
    it got for them (its mmap threshold rises to the largest block freed), so a shard that once
    held many 16 MiB frames would otherwise keep their pages for good."""

    def __init__(self) -> None:
        self.call_later: Later | None = None
        self._armed = False
        self._trim: Callable[[int], int] | None = None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            self._trim = libc.malloc_trim if libc is not None else None  # glibc only
        except (OSError, AttributeError):
            self._trim = None
        self.trims = 0
        self.seconds = 0.0

    def freed(self, n: int) -> None:
        """``n`` bytes of one buffer were freed: trim soon (once for a burst of them)."""
        if n >= TRIM_AFTER and not self._armed and self._trim is not None and self.call_later is not None:
            self._armed = True
            self.call_later(TRIM_DELAY_S, self.trim)

    def trim(self) -> None:
        self._armed = False
        if self._trim is None:
            return
        t0 = time.perf_counter()
        self._trim(0)
        took = time.perf_counter() - t0
        self.trims += 1
        self.seconds += took
        log.debug("malloc_trim took %.2f ms", took * 1000)


__all__ = ["SMALL_FRAME", "OutputBudget", "InputBudget", "HeapTrimmer"]


# What a request answered later is expected to hold until its answer is sent: the request's own
# blob (its payloads live on in the operation), plus its answer. A task row costs ~0.5 KiB on the
# wire and several times that as Python objects while the answer is being merged.
TASK_ROW_ESTIMATE = 2048
SMALL_ANSWER_ESTIMATE = 4096
STATS_ESTIMATE = 64 * 1024


def answer_estimate(msg: Message) -> int:
    """Bytes to reserve for ``msg`` while its answer is on its way (it need not be exact: it
    bounds how many such requests one connection may have in flight)."""
    h = msg.header
    t = msg.type
    n = SMALL_ANSWER_ESTIMATE + len(msg.blob)
    if t is MsgType.LIST_TASKS:
        limit = h.get("limit")
        n += TASK_ROW_ESTIMATE * (limit if type(limit) is int and 0 < limit <= 1000 else 100)
    elif t is MsgType.QUERY_STATUS:
        ids = h.get("ids")
        n += TASK_ROW_ESTIMATE * (len(ids) if type(ids) is list else 1)
        if h.get("with_result") or h.get("with_payload"):
            n += MAX_FRAME // 4  # results and payloads: up to a frame; a quarter is our guess
    elif t is MsgType.GET_STATS:
        n += STATS_ESTIMATE
    elif t is MsgType.SUBMIT or t is MsgType.REQUEUE:
        tasks = h.get("tasks") or h.get("ids")
        n += 64 * (len(tasks) if type(tasks) is list else 1)
    return n


def typed_estimate(t: MsgType, blob_len: int, args: tuple[Any, ...]) -> int:
    """``answer_estimate`` of a SUBMIT, CLAIM or RESULT decoded in one pass (protocol/typed.py:
    ``args`` are its arguments, the tasks second for a SUBMIT)."""
    n = SMALL_ANSWER_ESTIMATE + blob_len
    if t is MsgType.SUBMIT:
        n += 64 * len(args[1])
    return n
