"""The package as a user installs it: `python -m build` makes a wheel and an sdist, and the
wheel goes into a fresh venv (Debian's python3, outside any home directory) that every
local user may run, so tests can run ecs-imds as an unprivileged user too."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
# The real clients the sandbox tests run as an unprivileged user, beside the package.
CLIENTS = ["alibabacloud_credentials", "aliyun-python-sdk-core", "oss2"]


@dataclass(frozen=True)
class Installed:
    dist: Path      # the wheel and the sdist
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def ecs_imds(self) -> str:
        return str(self.venv / "bin" / "ecs-imds")


def build(out: Path) -> tuple[Path, Path]:
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = out.glob("ecs_imds-*.whl")
    (sdist,) = out.glob("ecs_imds-*.tar.gz")
    return wheel, sdist


def install(wheel: Path, venv: Path, *extra: str) -> None:
    """A fresh venv with the wheel (and `extra` packages) from PyPI or pip's cache."""
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", str(wheel), *extra], check=True,
                   capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    with tempfile.TemporaryDirectory(prefix="ecs-imds-installed-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # every local user may run what is installed here
        wheel, _ = build(root / "dist")
        install(wheel, root / "venv", *CLIENTS)
        yield Installed(root / "dist", root / "venv")


def nobody_dir() -> tempfile.TemporaryDirectory[str]:
    """A scratch directory the user nobody owns (and root removes afterwards)."""
    import shutil

    tmp = tempfile.TemporaryDirectory(prefix="ecs-imds-nobody-")
    shutil.chown(tmp.name, "nobody", "nogroup")
    return tmp
