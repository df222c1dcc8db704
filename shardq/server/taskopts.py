"""SUBMIT with task options (expiry, unique keys) on a shard: where a unique task is made, and
how the answer says which tasks were duplicates (docs/protocol.md, "Task options").

Rules:
1. A unique task is made by the owner of its key (protocol/task_options.unique_owner), in that
   shard's partition, so that one shard decides for a key. A client id given with a unique key
   must be in that partition (the bundled clients make it there); otherwise the SUBMIT is
   refused, naming the field.
2. A batch whose tasks all live here is stored here (``Engine.submit_with_options``); any other
   goes the routed way (routing.submit), which sends each owner its part.
3. The answer is a ``SubmittedIds``: the ids in order, and ``duplicates``, the positions answered
   with the id of a task that already held the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardq.clock import now_ms
from shardq.errors import BadRequest
from shardq.protocol.task_options import unique_owner
from shardq.specs import TaskSpec
from shardq.task import id_to_str, owner_of

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer


class SubmittedIds(list[str]):
    """SUBMIT's ids, with the positions that were duplicates of a held unique key."""

    duplicates: list[int]

    def __init__(self, ids: list[str], duplicates: list[int] | None = None) -> None:
        super().__init__(ids)
        self.duplicates = duplicates or []


def any_options(specs: list[TaskSpec]) -> bool:
    for spec in specs:
        if spec.options is not None:
            return True
    return False


def spec_owner(spec: TaskSpec, shards: int, default: int) -> int:
    """The shard that stores ``spec``: its id's owner, its unique key's owner, or ``default``."""
    if spec.id is not None:
        return owner_of(spec.id, shards) if shards > 1 else 0
    opts = spec.options
    if opts is not None and opts.unique_key is not None:
        return unique_owner(spec.type, opts.unique_key, shards)
    return default


def check_unique_ids(specs: list[TaskSpec], shards: int) -> None:
    """Rule 1: a client id given with a unique key is in the key owner's partition."""
    if shards <= 1:
        return
    for i, spec in enumerate(specs):
        opts = spec.options
        if spec.id is None or opts is None or opts.unique_key is None:
            continue
        want = unique_owner(spec.type, opts.unique_key, shards)
        if owner_of(spec.id, shards) != want:
            raise BadRequest(
                f"tasks[{i}].id: {id_to_str(spec.id)} is in shard {owner_of(spec.id, shards)}'s "
                f"partition, but a task with unique_key {opts.unique_key!r} is made by shard {want} "
                "(the key's owner): leave id out, or make it in that partition")


def submit_here(server: ShardServer, specs: list[TaskSpec], routed: bool) -> SubmittedIds | None:
    """SUBMIT of a batch with task options, stored here; None when it must be routed (rule 2)."""
    check_unique_ids(specs, server.shards)
    if routed and any(spec_owner(s, server.shards, server.index) != server.index
                      or any(not server.owns(d) for d in s.depends_on) for s in specs):
        return None
    ids, dups = server.engine.submit_with_options(specs, now_ms())
    return SubmittedIds([id_to_str(i) for i in ids], dups)


def store_part(server: ShardServer, specs: list[TaskSpec], remote_status: dict[bytes, int | None],
               check_depth: bool) -> SubmittedIds:
    """This shard's part of a routed batch with task options."""
    ids, dups = server.engine.submit_with_options(specs, now_ms(), remote_status=remote_status,
                                                  check_depth=check_depth)
    return SubmittedIds([id_to_str(i) for i in ids], dups)
