"""The wire form of the per-type controls (feature ``type-controls``): PAUSE_TYPE, RESUME_TYPE,
SET_LIMITS and GET_CONTROLS headers -> typed arguments, or BadRequest naming the field.

Rule: unlike the core requests, these refuse unknown fields: an operator's misspelt limit
(``max_concurency``) must not be taken as "no limit".
"""

from __future__ import annotations

from typing import Any

from shardq.errors import BadRequest
from shardq.protocol.requests import MAX_TYPE_LEN, get_str

# The mesh carries a committed record from its owner to the other shards in this field of a
# SET_LIMITS header; only a peer session (the mesh) honours it.
APPLY_FIELD = "_apply"
# Bounds of the settable values (checked, not clamped).
MAX_CONCURRENCY = 1_000_000
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000
_COMMON = frozenset(("rid", "type"))
_LIMIT_FIELDS = frozenset(("max_concurrency", "rate", "burst"))
UNSET = object()  # a limit the request leaves as it is


def _no_unknown(header: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(k for k in header if k not in allowed and not k.startswith("_"))
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed - {'rid'}))})")


def parse_type(header: dict[str, Any]) -> str:
    """PAUSE_TYPE / RESUME_TYPE: ``{"type": str}``."""
    _no_unknown(header, _COMMON)
    return get_str(header, "type", "", MAX_TYPE_LEN)  # type: ignore[no-any-return]


def parse_set_limits(header: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    """SET_LIMITS: the type, then max_concurrency, rate, burst: UNSET (absent: unchanged), None
    (null: cleared) or the new value."""
    _no_unknown(header, _COMMON | _LIMIT_FIELDS)
    task_type = get_str(header, "type", "", MAX_TYPE_LEN)
    if not _LIMIT_FIELDS & header.keys():
        raise BadRequest("SET_LIMITS: give at least one of max_concurrency, rate, burst "
                         "(null clears one)")
    cap = header.get("max_concurrency", UNSET)
    if cap is not UNSET and cap is not None and (type(cap) is not int or not 1 <= cap <= MAX_CONCURRENCY):
        raise BadRequest(f"max_concurrency: must be an integer 1..{MAX_CONCURRENCY} or null, got {cap!r}")
    rate = header.get("rate", UNSET)
    if rate is not UNSET and rate is not None:
        if type(rate) not in (int, float) or not 0 < rate <= MAX_RATE:
            raise BadRequest(f"rate: must be a number of claims per second, > 0 and <= {MAX_RATE:g}, "
                             f"or null, got {rate!r}")
        rate = float(rate)
    burst = header.get("burst", UNSET)
    if burst is not UNSET and burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_BURST):
        raise BadRequest(f"burst: must be an integer 1..{MAX_BURST} or null, got {burst!r}")
    return task_type, cap, rate, burst


def parse_get_controls(header: dict[str, Any]) -> str | None:
    """GET_CONTROLS: ``{"type"?: str}`` (absent: every controlled type)."""
    _no_unknown(header, _COMMON)
    return get_str(header, "type", "", MAX_TYPE_LEN, default=None)  # type: ignore[no-any-return]
