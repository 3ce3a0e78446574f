"""Process set-up for consuming."""

from __future__ import annotations

import gc

# Young-generation collections every GC_YOUNG_THRESHOLD tracked allocations instead of
# CPython's 700: a batch of 500 events allocates thousands of short-lived objects (structs,
# UUIDs, reply lists) that reference counting frees, and collecting every 700 of them
# spent more time than decoding them.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Set this process up for consuming: called once, after start-up (imports, pools,
    workers) and before the first read.

    Everything alive at that point lives as long as the process, so it is moved out of
    the collector's view (``gc.freeze``) instead of being traversed by every full
    collection, and young collections run far less often (``GC_YOUNG_THRESHOLD``).
    Reference cycles are still collected; memory stays bounded by the batch limits."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
