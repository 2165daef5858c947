"""Snapshot building at fleet scale, in a fresh process: `python bench/scale.py DATA_DIR`.

Builds the snapshot of the store in DATA_DIR with the server's own SnapshotBuilder, then has
every instance rendered (as its first request would), and prints one JSON line: the times,
and the resident memory before, after the build and after every instance was rendered.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

from ecs_imds.protocol.snapshot import Deferred
from ecs_imds.store import open_store
from ecs_imds.store.feed import SnapshotBuilder
from ecs_imds.store.keys import ensure_token_keys


def rss() -> int:
    """Resident memory of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main(data_dir: str) -> None:
    store = open_store(None, Path(data_dir))
    ensure_token_keys(store)
    gc.collect()
    before = rss()
    start = time.perf_counter()
    snap = SnapshotBuilder(store).build()
    built = time.perf_counter() - start
    gc.collect()
    after_build = rss()
    start = time.perf_counter()
    for item in snap.by_id.values():
        if isinstance(item, Deferred):
            assert item.get() is not None, item.instance_id
    rendered = time.perf_counter() - start
    gc.collect()
    after_render = rss()
    print(json.dumps({"instances": len(snap.by_id), "build_s": built, "render_all_s": rendered,
                      "rss_before": before, "rss_built": after_build,
                      "rss_rendered": after_render}))


if __name__ == "__main__":
    main(sys.argv[1])
