"""A real headless Chromium (Debian's, driven by Playwright) for the console's tests and
screenshots, and a loopback door to a control plane that listens on a unix socket.

Chromium runs with a fresh profile and without anything that would reach out of the machine
(the network here is closed): no background networking, component updates, sync or QUIC.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import BrowserContext, ConsoleMessage, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@contextlib.contextmanager
def chromium(viewport: dict[str, int] = DESKTOP) -> Iterator[BrowserContext]:
    """A browser with a profile of its own, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=viewport)
        try:
            yield context
        finally:
            context.close()


def sign_in(page: Page, console_url: str, token: str) -> None:
    """Open the console and sign in with `token`; returns once the fleet is listed."""
    page.goto(console_url)
    page.fill("#signin-token", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("table.fleet tbody tr")


def page_errors(page: Page) -> list[str]:
    """Script errors and CSP violations the page reports, collected as they happen (an
    API's error status, which the console shows, is not one)."""
    errors: list[str] = []

    def logged(msg: ConsoleMessage) -> None:
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(msg.text)

    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", logged)
    return errors


class UnixDoor:
    """127.0.0.1:PORT → a unix socket, byte for byte, for as long as it is open: how a
    browser on this machine reaches a control plane listening on a socket in a namespace's
    directory (the CLI and tests use the socket itself)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.path))
            except OSError:
                client.close()
                upstream.close()
                continue
            threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()

    def close(self) -> None:
        self._open = False
        self._listener.close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Both directions until both have ended, then close both."""
    back = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    back.start()
    _pipe(a, b)
    back.join()
    a.close()
    b.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
