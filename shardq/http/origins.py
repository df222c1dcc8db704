"""The config check of ``api.cors_origins`` entries (config.py uses it as a ``Check``).

It lives here, beside the CORS code that compares origins, and imports nothing of config.py:
ListOf (config.py) calls it as any check, with the same attributes.
"""

from __future__ import annotations

import re
from typing import Any

from shardq.errors import ConfigError

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class Origin:
    """A browser origin as the ``Origin`` header sends it: ``scheme://host[:port]``, no path, or
    ``*`` (any origin)."""

    allowed = "'*' or an origin such as 'https://app.example.com' (scheme://host[:port], no path)"
    verbatim_env = True
    secret = False

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or (value != "*" and not _ORIGIN.match(value)):
            raise ConfigError(f"{key}: {value!r} is not an origin (allowed: {self.allowed})")
        return value

    def show(self, value: Any) -> str:
        return repr(value)

    def hide(self, value: Any) -> Any:
        return value
