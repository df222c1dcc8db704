"""The coordinator's slot accounting for concurrency caps (server/coordinator_controls.py),
driven by hand-made REPORTs: the sum of what every shard may run never exceeds the cap."""

from __future__ import annotations

import random
from typing import Any

from shardq.server.coordinator_controls import CoordinatorControls, split

CAP_T = "t"


class Coord(CoordinatorControls):
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.links: dict[int, Any] = {}
        self._init_controls()

    def connect(self, shard: int, records: list[dict[str, Any]] | None = None) -> None:
        self.links[shard] = object()
        self.controls_link_new(shard)
        self.on_controls_report(shard, {"controls": records or []})

    def report_usage(self, shard: int, limit: int | None, running: int, ready: int, *,
                     applied: bool = True) -> None:
        """A shard's REPORT; ``limit`` None: the limit last granted to it (it applied it)."""
        if limit is None:
            limit = self.grants.get(shard, {}).get(CAP_T, [0])[0]
        seq = self.grant_seq.get(shard, 0) if applied else -1
        self.on_controls_report(shard, {"usage": {"epoch": self.epoch, "seq": seq,
                                                  "types": {CAP_T: [limit, running, ready]}}})

    def limit_of(self, shard: int) -> int:
        return int(self.grants[shard][CAP_T][0])

    def total_hold(self) -> int:
        return sum(h.get(CAP_T, 0) for h in self.hold.values())


def cap_record(cap: int, version: int = 1) -> dict[str, Any]:
    return {"type": CAP_T, "paused": False, "max_concurrency": cap, "rate": None, "burst": None,
            "version": version, "updated_ms": 0}


def started(cap: int = 4, shards: int = 2) -> Coord:
    c = Coord(shards)
    c.connect(0, [cap_record(cap)])
    for i in range(1, shards):
        c.connect(i)
    for i in range(shards):
        c.report_usage(i, 0, 0, 0)
    return c


def test_split_is_even_and_exact() -> None:
    assert split(5, [0, 1, 2]) == {0: 2, 1: 2, 2: 1}
    assert sum(split(7, [3, 1]).values()) == 7


def test_slots_go_where_tasks_are_ready() -> None:
    c = started()
    c.report_usage(0, 0, 0, ready=10)
    assert c.limit_of(0) == 4 and c.total_hold() == 4


def test_a_lowering_frees_nothing_until_the_shard_confirms() -> None:
    c = started()
    c.report_usage(0, 0, 0, ready=10)
    c.report_usage(0, 4, 4, ready=10)  # shard 0 runs 4
    c.report_usage(1, 0, 0, ready=10)  # now shard 1 has work too: shard 0 must give back 2
    assert c.limit_of(0) == 2
    assert c.total_hold() <= 4 and c.grants[1].get(CAP_T, [0])[0] == 0  # nothing free yet
    c.report_usage(0, 2, 4, ready=10, applied=False)  # a report from before the grant: ignored
    assert c.grants[1].get(CAP_T, [0])[0] == 0
    c.report_usage(0, 2, 3, ready=10)  # applied; one of its four finished
    assert c.limit_of(1) == 1 and c.total_hold() == 4
    c.report_usage(0, None, 2, ready=10)
    assert c.limit_of(1) == 2 and c.total_hold() == 4


def test_a_dead_shard_keeps_its_hold_and_a_restart_resets_it() -> None:
    c = started()
    c.report_usage(0, 0, 0, ready=10)
    c.report_usage(0, 4, 4, ready=10)
    del c.links[0]
    c.controls_shard_lost()
    c.report_usage(1, 0, 0, ready=10)
    assert c.grants[1].get(CAP_T, [0])[0] == 0  # shard 0's four may still run
    c.connect(0, [cap_record(4)])  # restarted: no limit, its restored leases reported
    c.report_usage(0, 0, 1, ready=0)
    assert c.limit_of(1) == 3 and c.total_hold() == 4


def test_a_new_coordinator_grants_nothing_until_every_shard_reported() -> None:
    c = Coord(2)
    c.connect(0, [cap_record(4)])
    c.report_usage(0, 0, 0, ready=10)
    assert c.limit_of(0) == 0  # shard 1's records and usage are unknown: nothing granted
    c.connect(1)
    assert c.limit_of(0) == 0
    c.report_usage(1, 3, 3, ready=0)  # it kept the limit an earlier coordinator gave it
    assert c.limit_of(0) == 1 and c.total_hold() == 4
    c.report_usage(0, None, 0, ready=10)
    assert c.limit_of(0) == 1 and c.total_hold() == 4


def test_a_lower_cap_shrinks_limits_before_granting() -> None:
    c = started(cap=4)
    c.report_usage(0, 0, 0, ready=10)
    c.report_usage(0, 4, 4, ready=10)
    c.on_controls_report(0, {"controls": [cap_record(2, version=2)]})
    assert c.limit_of(0) == 2
    c.report_usage(1, 0, 0, ready=10)
    assert c.grants[1].get(CAP_T, [0])[0] == 0  # 4 still run on shard 0


def test_random_schedules_never_run_more_than_the_cap() -> None:
    """Shards that apply grants late, run tasks up to their limit, finish them at random and
    report with the sequence number they applied: the sum running never exceeds the cap."""
    for seed in range(30):
        rng = random.Random(seed)
        shards, cap = rng.randint(2, 4), rng.randint(1, 6)
        c = started(cap=cap, shards=shards)
        limit = [0] * shards
        applied = [0] * shards
        running = [0] * shards
        inbox: list[list[tuple[int, int]]] = [[] for _ in range(shards)]
        sent = [0] * shards
        for _ in range(400):
            for i in range(shards):  # grants the coordinator sent, queued in order
                if c.grant_seq.get(i, 0) != sent[i] and CAP_T in c.grants.get(i, {}):
                    sent[i] = c.grant_seq[i]
                    inbox[i].append((sent[i], c.grants[i][CAP_T][0]))
            i = rng.randrange(shards)
            step = rng.random()
            if step < 0.3 and inbox[i]:
                applied[i], limit[i] = inbox[i].pop(0)
            elif step < 0.6 and running[i] < limit[i]:
                running[i] += 1
            elif step < 0.8 and running[i]:
                running[i] -= 1
            ready = rng.choice((0, 5))
            c.on_controls_report(i, {"usage": {"epoch": c.epoch, "seq": applied[i],
                                               "types": {CAP_T: [limit[i], running[i], ready]}}})
            assert sum(running) <= cap, (seed, running, limit)
            assert sum(max(a, b) for a, b in zip(limit, running)) <= cap, (seed, limit, running)
