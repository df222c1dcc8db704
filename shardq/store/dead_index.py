"""The dead-letter time index (idx ``d``, store/layout.py) for data dirs written before it existed.

Rule: run once per data dir, when it is opened, before recovery reads it: every dead letter of
``live`` gets its ``d | updated_ms | id`` key, then the metadata flag DEAD_INDEX_META says it is
done, so later starts skip the scan. A stop half-way is harmless: the keys are idempotent puts and
the flag is written last. Why not a SCHEMA_VERSION bump: the layout of every other key is
unchanged, a data dir with the flag is still read correctly by a shardq that ignores ``d``, and
the scan is the same one a migration step would do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import rocksdict as rd

from shardq.store.layout import DEAD_INDEX_META, DEAD_TAG, IDX, LIVE, U64
from shardq.task import DEAD_LETTER, Task

if TYPE_CHECKING:
    from shardq.store.rocks import Store

log = logging.getLogger("shardq.store")

_COMMIT_EVERY = 10_000


def mark_built(store: Store) -> None:
    """A new data dir: nothing to index (staged; the caller commits)."""
    store.meta_put(DEAD_INDEX_META, b"1")


def ensure_dead_index(store: Store) -> int:
    """Give every dead letter its idx ``d`` key unless the data dir says it has them; how many."""
    if store.meta_get(DEAD_INDEX_META) is not None:
        return 0
    scan = rd.ReadOptions()
    scan.fill_cache(False)
    idx = store._cf[IDX]
    added = 0
    for raw, data in store._views[LIVE].items(read_opt=scan):
        if data[1] != DEAD_LETTER:
            continue
        updated_ms = Task.decode(raw, data).updated_ms
        store._batch.put(DEAD_TAG + U64.pack(updated_ms) + raw, b"", idx)
        store.staged += 1
        added += 1
        if store.staged >= _COMMIT_EVERY:
            store.commit()
    mark_built(store)
    store.commit()
    if added:
        log.info("%s: indexed %d dead letters by time (idx d)", store.path, added)
    return added
