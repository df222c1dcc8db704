"""The value checks of shardq's configuration: each takes (dotted key, raw value) and returns the
value to store, or raises ConfigError naming the key, the value (masked when it is a secret) and
what is allowed. config.py declares which check each key has; the rules of the whole are there.

Pure: no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from shardq.errors import ConfigError

# --- checks: each takes (dotted key, raw value) and returns the value to store, or raises ----------

class Check:
    allowed = ""
    verbatim_env = False  # True: an environment value is taken as text, not parsed as YAML
    secret = False        # True: this value, or part of it, must never be shown

    def __call__(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """The value as an error message shows it: its repr, secrets masked."""
        return _show(value)

    def hide(self, value: Any) -> Any:
        """A valid value as plain data (``config_as_dict``), each secret replaced by ``MASK``."""
        return value

    def fail(self, key: str, value: Any, what: str) -> ConfigError:
        return ConfigError(f"{key}: {self.show(value)} {what} (allowed: {self.allowed})")


def _show(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


MASK = "***"


def _masked(value: Any) -> str:
    """What is shown instead of a secret: no character of it, only its length or type."""
    if isinstance(value, str):
        return f"{MASK!r} ({len(value)} character{'' if len(value) == 1 else 's'})"
    return f"{MASK!r} ({type(value).__name__})"


class Int(Check):
    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def __call__(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, "is not an integer")
        if value < self.lo or (self.hi is not None and value > self.hi):
            raise self.fail(key, value, "is out of range")
        return value


class Float(Check):
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.allowed = f"a number {lo}..{hi}"

    def __call__(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, value, "is not a number")
        if not self.lo <= value <= self.hi:  # also refuses nan
            raise self.fail(key, value, "is out of range")
        return float(value)


class Bool(Check):
    allowed = "true, false"

    def __call__(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, value, "is not a boolean")
        return value


class Text(Check):
    """A string of at least ``min_len`` characters; ``optional``: also null ("" reads as null)."""

    verbatim_env = True

    def __init__(self, min_len: int = 1, optional: bool = False) -> None:
        self.min_len, self.optional = min_len, optional
        what = "a non-empty string" if min_len == 1 else f"a string of at least {min_len} characters"
        self.allowed = what + (" or null" if optional else "")

    def __call__(self, key: str, value: Any) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str):
            raise self.fail(key, value, "is not a string")
        if len(value) < self.min_len:
            raise self.fail(key, value, "is too short")
        return value


class Secret(Text):
    """A Text that is never shown: errors and ``dump_config`` mask it."""

    secret = True

    def show(self, value: Any) -> str:
        return _masked(value)

    def hide(self, value: Any) -> Any:
        return MASK


class Path(Text):
    """A filesystem path; a leading ``~`` is expanded."""

    def __call__(self, key: str, value: Any) -> str | None:
        text = super().__call__(key, value)
        return None if text is None else os.path.expanduser(text)


class Choice(Check):
    """One of a fixed set of words, case-insensitive, stored lowercase."""

    verbatim_env = True

    def __init__(self, *options: str) -> None:
        self.options = options
        self.allowed = ", ".join(options)

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in self.options:
            raise ConfigError(f"{key}: {_show(value)} is not one of {self.allowed}")
        return value.lower()


class Shards(Check):
    """``auto`` (one per core, or what the data dir recorded) or a count 1..1024, also as text."""

    allowed = "'auto' or an integer 1..1024"

    def __call__(self, key: str, value: Any) -> int | str:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            if text.isascii() and text.isdigit():  # "²".isdigit() is True, int("²") fails
                value = int(text)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, "is not a shard count")
        if not 1 <= value <= 1024:
            raise self.fail(key, value, "is out of range")
        return value


class HostPort(Check):
    """``host:port`` (IPv6 hosts in brackets), port 1..65535."""

    allowed = "'host:port' with port 1..65535, IPv6 hosts in brackets"

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, value, "is not a 'host:port' string")
        host, sep, port = value.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if (not sep or not bare or any(c.isspace() or c in "[]" for c in bare)
                or (":" in bare and bare == host) or not (port.isascii() and port.isdigit())
                or not 1 <= int(port) <= 65535):
            raise self.fail(key, value, "is not a valid 'host:port'")
        return value


class ListOf(Check):
    """A list (stored as a tuple) whose items each pass ``item``; errors name ``key[i]``."""

    def __init__(self, item: Check) -> None:
        self.item = item
        self.allowed = f"a list of: {item.allowed}"
        self.secret = item.secret

    def show(self, value: Any) -> str:
        if not self.secret:
            return _show(value)
        if not isinstance(value, list | tuple):
            return _masked(value)
        return "[" + ", ".join(self.item.show(v) for v in value) + "]"

    def hide(self, value: Any) -> Any:
        return [self.item.hide(v) for v in value]

    def __call__(self, key: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise self.fail(key, value, "is not a list")
        return tuple(self.item(f"{key}[{i}]", v) for i, v in enumerate(value))


class Record(Check):
    """A mapping with exactly the fields of ``cls``, each passing its check; builds a ``cls``."""

    def __init__(self, cls: type, checks: dict[str, Check]) -> None:
        self.cls, self.checks = cls, checks
        self.names = ", ".join(checks)
        self.allowed = f"a mapping with {self.names}"
        self.secret = any(check.secret for check in checks.values())

    def show(self, value: Any) -> str:
        if not self.secret:
            return _show(value)
        if isinstance(value, self.cls):
            value = {name: getattr(value, name) for name in self.checks}
        if not isinstance(value, Mapping):
            return _masked(value)  # an entry written as the bare secret, say
        return "{" + ", ".join(
            f"{name!r}: " + (self.checks[name].show(v) if name in self.checks else _masked(v))
            for name, v in value.items()) + "}"

    def hide(self, value: Any) -> Any:
        return {name: check.hide(value[name]) for name, check in self.checks.items()}

    def __call__(self, key: str, value: Any) -> Any:
        if isinstance(value, self.cls):
            value = {name: getattr(value, name) for name in self.checks}
        if not isinstance(value, Mapping):
            raise self.fail(key, value, "is not a mapping")
        for name in value:
            if name not in self.checks:
                raise ConfigError(f"{key}: unknown key {name!r} (allowed: {self.names})")
        for name in self.checks:
            if name not in value:
                raise self.fail(key, dict(value), f"lacks {name!r}")
        return self.cls(**{name: check(f"{key}.{name}", value[name])
                           for name, check in self.checks.items()})


