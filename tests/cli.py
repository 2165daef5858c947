"""Running the real `ecs-imds` command as a user would: as root, or as an unprivileged
local user (`nobody`) through runuser, from the package installed as users install it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from server import ECS_IMDS


def ecs_imds(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECS_IMDS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, input=input)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The command failed with exactly one line on stderr, naming every one of `words`."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def as_nobody(argv: Sequence[str], timeout: float = 60, cwd: str = "/"
              ) -> subprocess.CompletedProcess[str]:
    """Run argv as the unprivileged user nobody (argv[0] must be a program nobody may run:
    see installed.py)."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env={"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8"})
