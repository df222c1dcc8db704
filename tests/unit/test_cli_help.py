"""`shardq serve --help` and `shardq config --help` show each flag's built-in default, read from the schema."""

from __future__ import annotations

import re

import pytest

from shardq.cli import build_parser
from shardq.config import FLAG_TO_KEY, default_of


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, *(["check"] if command == "config" else []), "--help"])
    assert exit_info.value.code == 0
    # argparse wraps long lines: join them so that one flag's help is one line
    return re.sub(r"\s+", " ", capsys.readouterr().out)


@pytest.mark.parametrize("command", ["serve", "config"])
def test_every_flag_shows_its_default(command, capsys) -> None:
    text = help_text(command, capsys)
    for flag, key in FLAG_TO_KEY.items():
        assert f"{flag} V overrides {key} (default: {default_of(key)})" in text, flag


def test_the_defaults_are_the_schemas() -> None:
    assert default_of("broker.port") == 7070
    assert default_of("broker.shards") == "auto"
    assert default_of("monitoring.prometheus_port") == 9091
    with pytest.raises(KeyError):
        default_of("broker.nope")
