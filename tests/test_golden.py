"""What every demo instance sees, byte for byte, against tests/golden/ (`make golden`)."""

from __future__ import annotations

import difflib
from pathlib import Path

from golden import GOLDEN, run


def test_demo_crawl_matches_the_golden_files(tmp_path: Path) -> None:
    files = run(tmp_path)
    kept = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.txt")}
    assert set(files) == kept, "run `make golden` after adding or removing a crawl"
    diffs = []
    for name in sorted(files):
        expected = (GOLDEN / name).read_text()
        if files[name] != expected:
            diffs += difflib.unified_diff(expected.splitlines(), files[name].splitlines(),
                                          f"golden/{name}", "served", lineterm="", n=2)
    assert not diffs, "what instances see changed (`make golden` if intended):\n" + \
        "\n".join(diffs[:200])
