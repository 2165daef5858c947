"""Secrets at rest: the files that hold them are the server's user's alone.

The store holds every key (token keys, the credential secret, the identity key, the API
secret): whoever reads it can forge IMDS tokens, RAM credentials, identity signatures and
admin tokens. So the server runs with umask 077, its data dir is 0700, and the store and
its `-wal`/`-shm` files, the admin token and the logs are 0600. A file or directory found
open to group or others at start is tightened; if that is impossible (another owner), the
server refuses to start and says what to `chmod`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ecs_imds.config import Config
from ecs_imds.errors import ValidationError

UMASK = 0o077


def prepare(config: Config) -> None:
    """Set the umask, create the data dir (0700) and tighten what is already there."""
    os.umask(UMASK)
    make_dir(config.data_dir, "data-dir")
    store = config.store_path
    if store is not None:
        for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
            tighten(path, "store", 0o600)
    tighten(config.admin_token_path, "data-dir", 0o600)
    for where, log in (("audit-log", config.audit_path), ("access-log", config.access_log)):
        if log is not None:
            make_dir(log.parent, where, create_only=True)
            tighten(log, where, 0o600)


def make_dir(path: Path, where: str, create_only: bool = False) -> None:
    """Create `path` 0700 (and its parents) if missing; the data dir itself is also
    tightened and must be writable. A log's directory is only created (it may be a shared
    /var/log directory with a mode of its own)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(where, f"cannot create {path} ({exc.strerror}); create it for "
                                     f"uid {os.geteuid()} or choose another {where}") from None
    if create_only:
        return
    tighten(path, where, 0o700)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValidationError(where, f"{path} is not writable by uid {os.geteuid()}; "
                                     f"chown it to this user or choose another {where}")


def tighten(path: Path, where: str, mode: int) -> None:
    """Remove group and other permissions from an existing file or directory."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValidationError(where, f"cannot read {path} ({exc.strerror}); check its "
                                     "permissions") from None
    if not current & 0o077:
        return
    try:
        os.chmod(path, current & 0o700)
    except OSError:
        raise ValidationError(where, f"{path} is open to other users (mode {current:04o}) and "
                                     f"uid {os.geteuid()} cannot change it; run "
                                     f"chmod {mode:o} {path}") from None
