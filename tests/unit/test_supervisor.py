"""The supervisor's reading of a starting child's ready pipe (the rest runs in integration)."""

from __future__ import annotations

from typing import Any

from shardq.server.supervisor import read_ready


class FakePipe:
    def __init__(self, *messages: Any) -> None:
        self.messages = list(messages)

    def poll(self) -> bool:
        return bool(self.messages)

    def recv(self) -> Any:
        said = self.messages.pop(0)
        if isinstance(said, BaseException):
            raise said
        return said


def test_a_ready_sent_between_poll_and_liveness_check_is_not_a_death() -> None:
    pipe = FakePipe()

    def alive_and_says_ready_now() -> bool:
        pipe.messages.append("ready")  # arrives just after the poll
        return True

    assert read_ready(pipe, alive_and_says_ready_now) == ("starting", None)
    assert read_ready(pipe, lambda: True) == ("ready", "ready")


def test_ready_messages_and_deaths() -> None:
    assert read_ready(FakePipe({"metrics_port": 9091}), lambda: True) == ("ready", {"metrics_port": 9091})
    assert read_ready(FakePipe(EOFError()), lambda: True) == ("dead", None)
    assert read_ready(FakePipe("something else"), lambda: True) == ("dead", None)
    assert read_ready(FakePipe(), lambda: False) == ("dead", None)
    assert read_ready(FakePipe(), lambda: True) == ("starting", None)
