"""The console in a real headless Chromium, against a real server in a network namespace.

The server listens on 100.100.100.200:80 in its namespace, its control plane on a unix
socket that the CLI uses directly and the browser reaches through a loopback door
(browser.UnixDoor). An operator signs in, finds an instance, switches it to security
hardening and sees its tree change — and at that moment a plain GET from inside the
instance's namespace gets 403 — then switches back; an edit made meanwhile with the CLI is
reported, not overwritten; a read-only token changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from browser import PHONE, UnixDoor, chromium, page_errors, sign_in
from e2e import CLIENT_ENV, ENDPOINT, TTL, nic, serve_in
from netns import Topology, require_root
from server import ServerProcess

WEB, OTHER = "i-consoleweb", "i-consoleother"
ROLE = "console-role"
FLEET: dict[str, Any] = {
    "defaults": {"region-id": "cn-shanghai", "zone-id": "cn-shanghai-b",
                 "owner-account-id": "1234567890", "image-id": "ubuntu_22_04_x64",
                 "instance-type": "ecs.g7.large"},
    "instances": [
        {"instance-id": WEB, "instance-name": "console-web", "ram-role": ROLE,
         "tags": {"team": "web"},
         "network-interfaces": [nic(1, "192.168.0.10", "192.168.0.0/24", "192.168.0.0/16")]},
        {"instance-id": OTHER, "instance-name": "console-other",
         "network-interfaces": [nic(2, "192.168.0.11", "192.168.0.0/24", "192.168.0.0/16")]},
    ],
}


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    require_root()
    with Topology({"web": "192.168.0.10", "other": "192.168.0.11"}) as t:
        yield t


@pytest.fixture(scope="module")
def server(topo: Topology, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    srv = serve_in(topo, tmp_path_factory.mktemp("console"), FLEET)
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def console(server: ServerProcess) -> Iterator[str]:
    door = UnixDoor(server.api_socket)
    yield f"{door.url}/console/"
    door.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with chromium() as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    """A new tab (its own sessionStorage: signed out); no script error or CSP violation
    may happen in it."""
    tab = browser.new_page()
    errors = page_errors(tab)
    yield tab
    tab.close()
    assert errors == []


def plain_get(topo: Topology, who: str, path: str) -> int:
    """The status a plain GET (no token) gets from inside instance `who`."""
    result = topo[who].run(["curl", "-s", "--noproxy", "*", "-m", "3", "-o", "/dev/null",
                            "-w", "%{http_code}", f"{ENDPOINT}{path}"], env=CLIENT_ENV)
    return int(result.stdout or 0)


def token_get(topo: Topology, who: str, path: str) -> tuple[int, str]:
    """A GET from inside `who` after a token PUT, as the SDKs do."""
    script = (f"t=$(curl -s --noproxy '*' -m 3 -X PUT -H '{TTL}: 60' {ENDPOINT}/latest/api/token)"
              f" && curl -s --noproxy '*' -m 3 -w '\\n%{{http_code}}' "
              f"-H \"X-aliyun-ecs-metadata-token: $t\" {ENDPOINT}{path}")
    result = topo[who].run(["sh", "-c", script], env=CLIENT_ENV)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def options(server: ServerProcess, instance_id: str) -> dict[str, Any]:
    result = server.admin("--json", "options", instance_id)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def open_instance(page: Page, console: str, token: str, text: str, instance_id: str) -> None:
    """Sign in, find the instance with the search box, open its page."""
    sign_in(page, console, token)
    page.get_by_label("search", exact=True).fill(text)
    rows = page.locator("table.fleet tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-instance", instance_id)
    rows.first.get_by_role("link", name=instance_id).click()
    expect(page.locator(".tree .node").first).to_have_text("/latest/")


def tree_root_status(page: Page) -> str:
    return page.locator(".tree > li").first.inner_text()


def change_mode(page: Page, label: str) -> None:
    form = page.get_by_role("form", name="Metadata options")
    form.get_by_label("Access mode").select_option(label=label)
    form.get_by_role("button", name="Apply options").click()


def test_switching_to_hardened_changes_the_tree_and_the_instance_gets_403(
        page: Page, console: str, server: ServerProcess, topo: Topology) -> None:
    open_instance(page, console, server.token(), "console-web", WEB)
    page.get_by_role("tab", name="Without a token").click()
    expect(page.locator(".tree > li").first).not_to_contain_text("403")
    assert plain_get(topo, "web", "/latest/meta-data/instance-id") == 200

    change_mode(page, "security hardening")
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("security hardening")
    assert options(server, WEB)["HttpTokens"] == "optional"  # nothing before confirming
    dialog.get_by_role("button", name="Confirm").click()

    expect(page.locator(".tree > li").first).to_contain_text("403 Forbidden")
    expect(page.locator("h1 .mode")).to_have_text("security hardening")
    # The tree says 403 without a token: so does the data plane, to the instance itself.
    assert plain_get(topo, "web", "/latest/meta-data/instance-id") == 403
    assert token_get(topo, "web", "/latest/meta-data/instance-id") == (200, WEB)
    page.get_by_role("tab", name="With a token").click()
    expect(page.locator(".put")).to_contain_text("200 OK")
    page.locator(".tree .node", has_text="meta-data/").first.click()
    page.locator(".tree .node", has_text=re.compile(r"^instance-id$")).click()
    expect(page.locator("pre.body")).to_have_text(WEB)
    expect(page.locator(".answer .plain")).to_contain_text("403 Forbidden")

    change_mode(page, "normal")
    page.locator("dialog#confirm").get_by_role("button", name="Confirm").click()
    expect(page.locator("h1 .mode")).to_have_text("normal")
    expect(page.locator(".answer .plain")).to_contain_text("200 OK")
    assert plain_get(topo, "web", "/latest/meta-data/instance-id") == 200


def test_a_conflicting_cli_edit_is_reported_not_overwritten(
        page: Page, console: str, server: ServerProcess) -> None:
    open_instance(page, console, server.token(), OTHER, OTHER)
    form = page.get_by_role("form", name="Metadata options")
    form.get_by_label("Access mode").select_option(label="security hardening")
    # Meanwhile, someone else changes the instance from the command line...
    server.admin("options", OTHER, "--hop-limit", "3")
    # ...which the page shows without a reload (Live), keeping the edit begun.
    expect(page.get_by_text("token hop limit 3")).to_be_visible()
    expect(form.get_by_label("Access mode")).to_have_value("security-hardening")
    form.get_by_role("button", name="Apply options").click()
    page.locator("dialog#confirm").get_by_role("button", name="Confirm").click()

    expect(page.locator(".change-panel .notice")).to_contain_text("changed elsewhere")
    after = options(server, OTHER)
    assert after["HttpTokens"] == "optional" and after["HttpPutResponseHopLimit"] == 3
    expect(page.locator("h1 .mode")).to_have_text("normal")
    server.admin("options", OTHER, "--hop-limit", "1")


def test_a_read_only_token_cannot_change_anything(
        page: Page, console: str, server: ServerProcess) -> None:
    reader = server.admin("token", "create", "viewer").stdout.strip()
    open_instance(page, console, reader, "console-web", WEB)
    expect(page.locator("#who")).to_have_text("viewer · read-only")
    expect(page.locator(".readonly")).to_be_visible()
    assert page.locator(".change-panel").count() == 0
    assert page.locator("dialog#confirm").is_hidden()
    # Even asked directly with its token, the API refuses every change.
    statuses = page.evaluate("""async (id) => {
        const auth = {Authorization: `Bearer ${sessionStorage.getItem("ecs-imds-api-token")}`,
                      "Content-Type": "application/json"};
        const base = `/v1/instances/${id}`;
        const asks = [["PATCH", "/metadata-options", {HttpTokens: "required"}],
                      ["DELETE", "/ram-role"],
                      ["PUT", "/spot", {TerminationTime: "2030-01-01T00:00:00Z"}],
                      ["POST", "/events", {EventType: "SystemMaintenance.Reboot"}]];
        const out = [];
        for (const [method, path, body] of asks) {
            const r = await fetch(base + path, {method, headers: auth,
                                                body: body && JSON.stringify(body)});
            out.push(r.status);
        }
        return out;
    }""", WEB)
    assert statuses == [403, 403, 403, 403]
    opts = options(server, WEB)
    assert opts["HttpTokens"] == "optional"
    doc = json.loads(server.admin("--json", "instance", "get", WEB).stdout)
    assert doc.get("ram-role") == ROLE and "spot-termination-time" not in doc


def test_no_secret_reaches_the_page(page: Page, console: str, server: ServerProcess,
                                    topo: Topology) -> None:
    status, body = token_get(topo, "web", f"/latest/meta-data/ram/security-credentials/{ROLE}")
    assert status == 200
    served = json.loads(body)
    open_instance(page, console, server.token(), "console-web", WEB)
    for name in ("ram/", "security-credentials/", ROLE):
        page.locator(".tree .node", has_text=re.compile(f"^{name}$")).click()
    expect(page.locator("pre.body")).to_contain_text(
        '"AccessKeySecret" : "(hidden by the console)"')
    expect(page.locator(".facts").first).to_contain_text(served["AccessKeyId"])
    html = page.content()
    assert served["AccessKeyId"] in html  # the key id and expiry are shown...
    assert served["AccessKeySecret"] not in html  # ...the secret and the token never
    assert served["SecurityToken"] not in html
    assert server.token() not in html


def test_changes_made_elsewhere_appear_in_the_fleet_and_the_audit_log(
        page: Page, console: str, server: ServerProcess) -> None:
    sign_in(page, console, server.token())
    row = page.locator(f"tr[data-instance={OTHER}]")
    expect(row).not_to_contain_text("spot=yes")
    server.admin("tags", OTHER, "spot=yes")
    expect(row).to_contain_text("spot=yes")  # no reload: Live
    page.get_by_label("tag", exact=True).fill("spot=yes")
    expect(page.locator("table.fleet tbody tr")).to_have_count(1)
    page.get_by_label("access mode", exact=True).select_option("security-hardening")
    expect(page.locator("table.fleet tbody tr")).to_have_count(0)

    page.locator("#nav").get_by_role("link", name="Audit").click()
    page.get_by_label("instance", exact=True).fill(OTHER)
    audit = page.locator("table.audit tbody")
    expect(audit).to_contain_text("set-tags")
    expect(audit).not_to_contain_text(WEB)
    server.admin("tags", OTHER, "--remove", "spot")
    expect(audit).to_contain_text("delete-tag")


@pytest.mark.parametrize("viewport", [PHONE, {"width": 1280, "height": 800}],
                         ids=["phone", "desktop"])
def test_usable_at_phone_and_desktop_size(page: Page, console: str, server: ServerProcess,
                                          viewport: dict[str, int]) -> None:
    page.set_viewport_size(viewport)
    open_instance(page, console, server.token(), "console-web", WEB)
    wide = page.evaluate("document.scrollingElement.scrollWidth")
    assert wide <= viewport["width"], "the instance page scrolls sideways"
    expect(page.get_by_role("button", name="Apply options")).to_be_visible()
    page.locator("#nav").get_by_role("link", name="Fleet").click()
    expect(page.locator("table.fleet tbody tr").first).to_be_visible()
    assert page.evaluate("document.scrollingElement.scrollWidth") <= viewport["width"]
