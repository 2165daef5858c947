"""Secrets at rest (issue 9 §1): whoever reads the store can forge every token, credential
and signature, so the server keeps its files to its own user: data dir 0700, store and its
-wal/-shm, admin token and logs 0600, umask 077; what it finds open it tightens, or it
refuses to start saying what to chmod. An unprivileged local user reads none of it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import as_nobody, ecs_imds, one_line_error
from fleets import fleet_doc
from installed import Installed, nobody_dir
from server import ServerProcess, free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A directory others may enter (pytest's are root's alone, which would hide the modes
    under test)."""
    path = Path(tempfile.mkdtemp(prefix="ecs-imds-modes-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def serve(workdir: Path, **settings: object) -> ServerProcess:
    listener = {"bind": f"127.0.0.1:{free_port()}", "vpc-id": "vpc-bp1test0001"}
    return ServerProcess(workdir, fleet_doc(), [listener], **settings).start()


def test_every_secret_file_is_the_servers_alone(public_tmp: Path) -> None:
    logs = public_tmp / "logs"
    srv = serve(public_tmp, **{"access-log": str(logs / "access.log"),
                               "audit-log": str(logs / "audit.log")})
    try:
        data = public_tmp / "data"
        assert mode(data) == 0o700
        for name in ("ecs-imds.db", "ecs-imds.db-wal", "ecs-imds.db-shm", "admin.token"):
            assert mode(data / name) == 0o600, name
        assert mode(logs) == 0o700
        assert mode(logs / "audit.log") == 0o600
        assert mode(logs / "access.log") == 0o600
        assert (data / "ecs-imds.db").stat().st_size > 0
        for path in (data / "ecs-imds.db", data / "admin.token", logs / "audit.log"):
            denied = as_nobody(["cat", str(path)])
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert as_nobody(["ls", str(data)]).returncode != 0
    finally:
        srv.cleanup()


def test_files_left_open_by_an_older_version_are_tightened(public_tmp: Path) -> None:
    data = public_tmp / "data"
    srv = serve(public_tmp)
    srv.stop()
    data.chmod(0o755)
    for name in ("ecs-imds.db", "admin.token"):
        (data / name).chmod(0o644)
    srv.launch()
    try:
        assert mode(data) == 0o700
        assert mode(data / "ecs-imds.db") == 0o600
        assert mode(data / "admin.token") == 0o600
    finally:
        srv.cleanup()


def test_a_store_that_cannot_be_tightened_stops_the_start(installed: Installed,
                                                          tmp_path: Path) -> None:
    """Run as nobody on a data dir owned by root and open to all: nobody cannot chmod it,
    so the server refuses, naming the command that would fix it."""
    with nobody_dir() as scratch:
        data = Path(scratch) / "data"
        data.mkdir(mode=0o755)
        os.chown(data, 0, 0)
        data.chmod(0o755)
        result = as_nobody([installed.ecs_imds, "--data-dir", str(data), "serve", "--demo"])
        one_line_error(result, "data-dir", str(data), "mode 0755", f"chmod 700 {data}")


def test_an_unwritable_data_dir_for_an_ordinary_user(installed: Installed) -> None:
    with nobody_dir() as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        shutil.chown(data, "nobody", "nogroup")
        data.chmod(0o500)  # nobody's own, but not writable
        result = as_nobody([installed.ecs_imds, "--data-dir", str(data), "serve", "--demo"])
        one_line_error(result, "data-dir", str(data), "not writable", "choose another")


def test_umask_077_for_everything_the_server_writes(public_tmp: Path) -> None:
    """A file the server creates later (here: the access log's directory and file, made at
    start; the admin token) gets no group or other bits, whatever umask it was started in."""
    old = os.umask(0o000)
    try:
        srv = serve(public_tmp, **{"access-log": str(public_tmp / "new" / "a.log")})
    finally:
        os.umask(old)
    try:
        assert mode(public_tmp / "new" / "a.log") == 0o600
        assert mode(public_tmp / "data" / "admin.token") == 0o600
    finally:
        srv.cleanup()


def test_config_check_does_not_create_anything(tmp_path: Path) -> None:
    result = ecs_imds("--data-dir", str(tmp_path / "d"), "config", "check")
    assert result.returncode == 0
    assert not (tmp_path / "d").exists()
