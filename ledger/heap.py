"""Garbage-collector policy of a serving ledger process (`serve`, its workers, the benchmark).

A cached evaluation at 1,000,000 GPUs keeps ~10^5 long-lived objects (lines, site totals, the
JSON document). CPython's full collection rescans every tracked object; one landing in the first
query after an inventory change cost 50-80 ms. `gc.freeze()` moves what is alive into the
permanent generation, which collections skip. Frozen objects are still freed by reference
counting when dropped; only frozen *cycles* wait, so every `_UNFREEZE_EVERY` freezes the
permanent generation is handed back to the collector, whose next full pass reclaims them.
"""

from __future__ import annotations

import gc
import threading

_UNFREEZE_EVERY = 256
_lock = threading.Lock()
_freezes = 0


def settle_startup() -> None:
    """Collect once, then freeze everything start-up built (modules, registry, caches)."""
    gc.collect()
    gc.freeze()


def settle_after_evaluation() -> None:
    """Freeze a newly cached evaluation so that later collections do not rescan it."""
    global _freezes
    with _lock:
        _freezes += 1
        if _freezes % _UNFREEZE_EVERY == 0:
            gc.unfreeze()  # frozen cycles, if any, become collectable again
        gc.freeze()
