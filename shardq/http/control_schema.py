"""The HTTP API's bodies and answers for the per-type controls (feature ``type-controls``):
msgspec Structs, read by routes.py for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shardq.http.schema import Struct
from shardq.protocol import controls as wire

Cap = Annotated[int, Meta(ge=1, le=wire.MAX_CONCURRENCY)]
Rate = Annotated[float, Meta(gt=0, le=wire.MAX_RATE)]
Burst = Annotated[int, Meta(ge=1, le=wire.MAX_BURST)]


class Limits(Struct):
    """A type's limits: a field left out stays as it is; ``null`` clears it."""

    max_concurrency: Cap | None | UnsetType = UNSET
    rate: Rate | None | UnsetType = UNSET
    burst: Burst | None | UnsetType = UNSET


class Control(msgspec.Struct):
    """A type's control record, broker-wide."""

    type: str
    paused: bool
    max_concurrency: int | None
    rate: float | None
    burst: int | None
    version: int
    updated_ms: int


class ControlChanged(msgspec.Struct, omit_defaults=True):
    control: Control
    not_reached: list[int] | UnsetType = UNSET  # shards that were down (they learn it on start)


class ControlsQuery(Struct):
    type: Annotated[str, Meta(min_length=1, max_length=255)] | UnsetType = UNSET


class Controls(msgspec.Struct, omit_defaults=True):
    """Every paused or limited type, with each shard's live numbers (GET_CONTROLS)."""

    controls: list[dict[str, Any]]
    shards_down: list[int] | UnsetType = UNSET
