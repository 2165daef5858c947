"""The cyclic garbage collector, paused while a large document is parsed or built.

Parsing a fleet file or importing it makes millions of objects, and the collector walks
everything alive again each time their number grew by a quarter: a 100,000-instance fleet
file parses in 0.8 s with it paused, several times that without. Each of those walks holds
the GIL, so the event loop the data plane shares with the control plane stops meanwhile
(bench/import_beside.py: before, an instance waited up to 2.3 s during such an import). What
these documents hold has no reference cycles: reference counting frees it all the same.
Pauses nest and may come from several threads; the collector runs again when the last one
ends.

A document that outlives its pause (a parsed request body, a snapshot) would be walked whole
by the first collection after it — every object made during a pause is still in the
youngest generation — so such a pause ends with `freeze`: what is alive then leaves the
collector's sight for good (as the data plane does with each large snapshot). The price is
that reference cycles alive at that moment are never collected: a few, once per import or
large build.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_paused = 0
_was_enabled = True


@contextmanager
def paused(freeze: bool = False) -> Iterator[None]:
    """The collector paused meanwhile; with `freeze`, what is alive at the end is frozen
    (see above)."""
    global _paused, _was_enabled
    with _lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        with _lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


def release(items: list[Any]) -> None:
    """Empty a large list an item at a time. Freeing a list whole is one C call, which
    holds the GIL until the last object below it is freed (a fleet file's 100,000 parsed
    instances: 0.3 s, the data plane's event loop stopped meanwhile); item by item, the
    interpreter can switch threads between items."""
    while items:
        items.pop()
