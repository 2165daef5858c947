"""`serve --workers N`: N data plane processes, one per core, behind the same addresses.

One Python process serves from one core. With N workers the parent forks N children; each
opens the store itself, builds its own snapshot and follows the change feed itself, and
binds every listener with SO_REUSEPORT, so the kernel spreads connections over them. Only
worker 0 runs the control plane. The parent only forwards SIGINT/SIGTERM (and SIGHUP, a
reload) and waits; when a
worker dies, the others are stopped too and the parent exits with an error, so that a
supervisor (systemd) restarts the whole service rather than leave it running short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger("ecs_imds.server.workers")


def run_workers(count: int, serve: Callable[[int], None]) -> int:
    """Fork `count` children running `serve(index)`; returns the exit status for the parent."""
    children: dict[int, int] = {}
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _kill(pid, signum)

    def reload(signum: int, frame: object) -> None:
        for pid in children:
            _kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its loop handles it
            status = 0
            try:
                serve(index)
            except BaseException:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = index
    log.info("%d data plane workers: %s", count, ", ".join(map(str, children)))
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        if os.waitstatus_to_exitcode(code) != 0 or not stopping:
            if not stopping:
                log.error("worker %d (pid %d) exited; stopping the others", index, pid)
            status = 1
            stopping = True
            for other in children:
                _kill(other, signal.SIGTERM)
    return status


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
