"""The client and CLI side of schedules, without a server: the request they build, the feature
check that keeps an old server from seeing a message type it does not know, and the CLI's
duration and interval arguments."""

from __future__ import annotations

import argparse

import pytest

from shardq.client.schedules import add_request, check_feature
from shardq.errors import ShardqError
from shardq.protocol.schedules import parse_schedule_add
from shardq.schedules_cli import _every, duration_ms


def test_add_request_round_trips_through_the_servers_parser() -> None:
    header, blob = add_request("nightly", "report", {"a": 1}, cron="30 2 * * *", timezone="Europe/Paris",
                               priority=7, misfire="once", misfire_grace=2.5, paused=True)
    spec = parse_schedule_add(header, blob)
    assert (spec.name, spec.type, spec.payload, spec.cron, spec.every_ms) == (
        "nightly", "report", b'{"a":1}', "30 2 * * *", None)
    assert (spec.timezone, spec.priority, spec.misfire, spec.misfire_grace_ms, spec.paused) == (
        "Europe/Paris", 7, "once", 2500, True)
    header, blob = add_request("beat", "tick", every=30)
    assert parse_schedule_add(header, blob).every_ms == 30_000


def test_a_server_without_the_feature_is_refused_before_sending() -> None:
    check_feature({"features": ["schedules"]})
    with pytest.raises(ShardqError, match="does not support schedules"):
        check_feature({"server": "shardq/0.1.0"})


@pytest.mark.parametrize("text, ms", [("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000),
                                      ("500ms", 500), ("2", 2000), ("1.5s", 1500)])
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_ms(text)


@pytest.mark.parametrize("text", ["500ms", "1.5s", "0s"])
def test_an_interval_is_whole_seconds_of_at_least_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="whole seconds"):
        _every(text)
