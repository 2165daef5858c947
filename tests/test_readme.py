"""README as a newcomer reads it: its links stay in the repository, its systemd unit is as
hardened as it says, and the package it tells people to install works (tests/installed.py
builds it)."""

from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

from cli import as_nobody
from installed import Installed

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_links_only_inside_the_repository() -> None:
    assert "shared/" not in README.replace("shared memory", "")
    for target in re.findall(r"\]\(([^)#]+)", README):
        if not target.startswith(("http://", "https://")):
            assert not target.startswith(("/", "..")), target


def test_the_systemd_unit_is_hardened_and_restarts_forever(tmp_path: Path) -> None:
    (unit,) = re.findall(r"```ini\n# /etc/systemd/system/ecs-imds.service\n(.*?)```", README,
                         re.S)
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert settings["Restart"] == "always" and settings["RestartSec"]
    assert settings["StartLimitIntervalSec"] == "0"  # never gives up
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["StateDirectoryMode"] == settings["LogsDirectoryMode"] == "0700"
    path = tmp_path / "ecs-imds.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for ecs-imds.service: ([\d.]+)", result.stdout)
    assert level is not None, result.stdout + result.stderr
    assert float(level.group(1)) <= 3.0
    assert f"rates it {level.group(1)}" in README  # what README claims is what it rates


def test_wheel_and_sdist_carry_the_demo_fleet_and_the_plugin(installed: Installed) -> None:
    (wheel,) = installed.dist.glob("*.whl")
    (sdist,) = installed.dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ecs_imds/demo/fleet.yaml" in names
    assert "ecs_imds/testing/plugin.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]\necs_imds = ecs_imds.testing.plugin" in text
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("src/ecs_imds/demo/fleet.yaml") for n in tar.getnames())


def test_the_installed_package_serves_the_demo_fleet_to_an_ordinary_user(
        installed: Installed) -> None:
    """From the fresh venv, as nobody: the demo fleet comes with the package, and so does
    the test fixture's server."""
    code = ("from ecs_imds.testing import ImdsServer\n"
            "with ImdsServer() as server:\n"
            "    print(server.client('i-bp1demo0000000000003').get('meta-data/instance-id')"
            ".decode())\n")
    result = as_nobody([installed.python, "-c", code], timeout=120)
    assert (result.returncode, result.stdout) == (0, "i-bp1demo0000000000003\n"), result.stderr
    version = as_nobody([installed.ecs_imds, "--version"])
    assert version.stdout.startswith("ecs-imds, version ")
