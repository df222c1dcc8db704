"""When a schedule's ticks fall: a cron expression in a time zone, or a fixed interval.

Rules:
1. Pure: times are epoch milliseconds in and out; no clock is read here.
2. Cron is evaluated by cronsim (the evaluator healthchecks.io runs on millions of checks), not
   by us: 5 fields (minute resolution), or 6 with a leading seconds field. Its DST behaviour is
   cronie's: a local time that does not exist (spring forward) fires at the first instant after
   the gap; a local time that happens twice (fall back) fires once, at its first occurrence;
   expressions with a wildcard hour (``*/30 * * * *``) fire by the wall clock in both halves.
3. ``every_ms`` ticks are the multiples of the interval since the Unix epoch (UTC): the same
   instants whatever shard or restart computes them, which the tick ids rely on.
4. Errors are BadRequest naming the field (``cron``, ``timezone``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from shardq.errors import BadRequest


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (from the system's zone files, else the tzdata wheel)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(f"timezone: {name!r} is not a known IANA time zone (e.g. UTC, "
                         f"Europe/Paris, America/New_York): {exc}") from None


class Timing:
    """The ticks of one schedule."""

    __slots__ = ("cron", "every_ms", "tz")

    def __init__(self, cron: str | None, every_ms: int | None, tz: str, check: bool = True) -> None:
        """``check``: validate the expression (False for one read back from the store)."""
        if (cron is None) == (every_ms is None):
            raise BadRequest("cron, every_ms: give exactly one of them")
        self.cron = cron
        self.every_ms = every_ms
        self.tz = zone(tz)
        if cron is not None and check:
            try:
                CronSim(cron, datetime(2000, 1, 1, tzinfo=self.tz))
            except CronSimError as exc:
                raise BadRequest(f"cron: {cron!r} is not a valid cron expression ({exc}; 5 fields "
                                 "'minute hour day month weekday', or 6 with seconds first)") from None
            self._first()

    def _first(self) -> None:
        # cronsim accepts some expressions that never match (30 February); one lookup says so.
        try:
            self.next_after(0)
        except (StopIteration, CronSimError, OverflowError, ValueError):
            raise BadRequest(f"cron: {self.cron!r} never fires") from None

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        if self.every_ms is not None:
            return ms - ms % self.every_ms + self.every_ms
        assert self.cron is not None
        start = datetime.fromtimestamp(ms / 1000, self.tz)
        return _ms(next(CronSim(self.cron, start)))

    def ticks_after(self, ms: int) -> Iterator[int]:
        """The ticks strictly after ``ms``, in order: one cron evaluation, then a step each."""
        if self.every_ms is not None:
            every = self.every_ms
            t = ms - ms % every
            while True:
                t += every
                yield t
        assert self.cron is not None
        for dt in CronSim(self.cron, datetime.fromtimestamp(ms / 1000, self.tz)):
            yield _ms(dt)

    def latest_at_or_before(self, ms: int) -> int:
        """The last tick at or before ``ms``."""
        if self.every_ms is not None:
            return ms - ms % self.every_ms
        assert self.cron is not None
        # cronsim's reverse walk is strictly before a whole second and at-or-before a
        # fraction of one: a millisecond later makes it at-or-before ``ms`` always.
        start = datetime.fromtimestamp((ms + 1) / 1000, self.tz)
        return _ms(next(CronSim(self.cron, start, reverse=True)))


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def local_iso(ms: int, tz: str) -> str:
    """``ms`` as an ISO 8601 time in zone ``tz`` (for people: list, show)."""
    return datetime.fromtimestamp(ms / 1000, zone(tz)).isoformat(timespec="seconds")


def utc_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
