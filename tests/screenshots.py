"""`make screenshots`: the console's pictures in the README, taken anew.

Serves the demo fleet on loopback (one instance given a spot reclaim and a system event,
so that every column has something to show), signs in with the admin token in Debian's
headless Chromium and writes docs/console-fleet.png and docs/console-instance.png at
1280x800, and docs/console-phone.png at a phone's size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from browser import DESKTOP, PHONE, chromium, sign_in
from server import demo_server

DOCS = Path(__file__).resolve().parent.parent / "docs"
WEB, HARDENED, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ecs-imds-shots-") as tmp:
        srv = demo_server(Path(tmp), {"127.0.0.1": WEB})
        try:
            api = httpx.Client(base_url=srv.api_url,
                               headers={"Authorization": f"Bearer {srv.token()}"})
            soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            api.put(f"/v1/instances/{SPOT}/spot", json={"TerminationTime": soon})
            api.post(f"/v1/instances/{SPOT}/events",
                     json={"EventType": "SystemMaintenance.Reboot", "Reason": "host upgrade"})
            srv.wait_version(api.get("/v1/console/version").json()["store"])
            console = f"{srv.api_url}/console/"
            with chromium(DESKTOP) as browser:
                page = browser.new_page()
                sign_in(page, console, srv.token())
                page.screenshot(path=DOCS / "console-fleet.png")
                page.get_by_role("link", name=WEB).click()
                for name in ("ram/", "security-credentials/", "demo-ecs-role"):
                    page.locator(".tree .node", has_text=name).first.click()
                page.locator("pre.body").wait_for()
                page.screenshot(path=DOCS / "console-instance.png", full_page=True)
            with chromium(PHONE) as browser:
                page = browser.new_page()
                sign_in(page, console, srv.token())
                page.screenshot(path=DOCS / "console-phone.png")
        finally:
            srv.cleanup()
    print(f"written to {DOCS}: console-fleet.png, console-instance.png, console-phone.png")


if __name__ == "__main__":
    main()
