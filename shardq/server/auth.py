"""A shard's API keys: the keys file loaded and kept fresh, failed HELLOs counted and slowed.

Rules:
1. The keys come from ``auth.keys_file`` (keys.py) plus the deprecated ``auth.api_keys``.
   ``reload`` reads the file again when its (mtime, size, inode) changed, or always when asked
   (SIGHUP). A file that became invalid is not taken: the last good keys stay, and the error is
   logged (it names the entry, never a secret) until the file is fixed.
2. A failed authentication is counted by reason (``failures``: tq_auth_failures_total),
   logged with the key id it named or "unknown", never the secret.
3. ``Throttle``: each source address may fail FREE_FAILURES times in a row; after that its
   Unauthorized answers are delayed, doubling from DELAY_BASE_S up to DELAY_MAX_S. The record of
   an address is forgotten after FORGET_AFTER_S without failures, and at most MAX_ADDRESSES are
   kept (the oldest go first), so a flood of addresses costs bounded memory. Per shard process:
   an address that spreads over N shards gets N times the free failures.

No asyncio here: the caller delays the answer (session.py) and runs the reload timer (shard.py).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict

from shardq.config import AuthConfig
from shardq.keys import FAILURE_REASONS, KeyRing, Verdict, legacy_records, now_ms, read_keys

log = logging.getLogger("shardq.auth")

FREE_FAILURES = 3
DELAY_BASE_S = 0.25
DELAY_MAX_S = 5.0
FORGET_AFTER_S = 60.0
MAX_ADDRESSES = 10_000


def load_ring(auth: AuthConfig) -> KeyRing:
    """The keys ``auth`` names (KeysFileError when the file is not valid)."""
    records = read_keys(auth.keys_file) if auth.keys_file else []
    return KeyRing(records + legacy_records(auth.api_keys))


class Throttle:
    def __init__(self) -> None:
        self.seen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (failures, last)

    def failed(self, address: str, now: float) -> float:
        """Note a failure from ``address``; the seconds to wait before answering it."""
        n, last = self.seen.pop(address, (0, now))
        n = 1 if now - last > FORGET_AFTER_S else n + 1
        self.seen[address] = (n, now)
        while len(self.seen) > MAX_ADDRESSES:
            self.seen.popitem(last=False)
        if n <= FREE_FAILURES:
            return 0.0
        return min(DELAY_MAX_S, DELAY_BASE_S * 2 ** (n - FREE_FAILURES - 1))


class Auth:
    def __init__(self, auth: AuthConfig) -> None:
        self.cfg = auth
        self.ring = KeyRing([])
        self.failures: Counter[str] = Counter({r: 0 for r in FAILURE_REASONS})
        self.throttle = Throttle()
        self._stamp: tuple[int, int, int] | None = None
        self._bad_stamp: tuple[int, int, int] | None = None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if not self.cfg.keys_file:
            return None
        try:
            st = os.stat(self.cfg.keys_file)
        except OSError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        """At start: the keys, or KeysFileError (the process exits with it)."""
        stamp = self._file_stamp()
        self.ring = load_ring(self.cfg)
        self._stamp = stamp

    def reload(self, force: bool = False) -> bool:
        """Read the file again if it changed (or ``force``); True when new keys were taken."""
        stamp = self._file_stamp()
        if not self.cfg.enabled or (not force and (stamp == self._stamp or stamp == self._bad_stamp)):
            return False
        try:
            ring = load_ring(self.cfg)
        except Exception as exc:  # KeysFileError, or anything unexpected: keep the good keys
            self._bad_stamp = stamp
            log.error("keys file not reloaded, keeping the %d keys loaded before: %s",
                      len(self.ring.records), exc)
            return False
        before = {r.id: r for r in self.ring.records}
        after = {r.id: r for r in ring.records}
        self.ring, self._stamp, self._bad_stamp = ring, stamp, None
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(k for k in after.keys() & before.keys() if after[k] != before[k])
        log.info("keys file reloaded: %d keys (added %s, removed %s, changed %s)", len(after),
                 ",".join(added) or "none", ",".join(removed) or "none", ",".join(changed) or "none")
        return True

    def verify(self, secret: object) -> Verdict:
        return self.ring.verify(secret, now_ms())

    def failed(self, reason: str, key_id: str, address: str, now: float) -> float:
        """Count and log a refused authentication; the seconds to wait before answering."""
        self.failures[reason] += 1
        delay = self.throttle.failed(address, now)
        log.warning("authentication failed from %s: %s (key id %s)%s", address, reason, key_id,
                    f"; answer delayed {delay:.2f} s" if delay else "")
        return delay

    def still_valid(self, key_id: str, secret_hash: str) -> str:
        return self.ring.still_valid(key_id, secret_hash, now_ms())


__all__ = ["Auth", "Throttle", "load_ring"]
