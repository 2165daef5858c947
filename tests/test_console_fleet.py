"""The console in fleet mode: two servers on one PostgreSQL; a change made through one
server's control plane (the CLI) appears in a browser showing the other's console without a
reload, in the fleet list and in the instance's tree as that server serves it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from browser import UnixDoor, chromium, page_errors, sign_in
from ecs_imds.demo import DEMO_VPC, demo_fleet
from pg import PostgresCluster
from server import ServerProcess, free_port, get

HARDENED = "i-bp1demo0000000000002"
SPOT = "i-bp1demo0000000000003"


def loopback_server(workdir: Path, url: str) -> ServerProcess:
    workdir.mkdir()
    port = free_port()
    srv = ServerProcess(workdir, demo_fleet(),
                        [{"bind": f"127.0.0.1:{port}", "vpc-id": DEMO_VPC,
                          "aliases": {"127.0.0.1": SPOT}}], store=url)
    srv.port = port
    return srv


@pytest.fixture
def servers(postgres: PostgresCluster, tmp_path: Path
            ) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    url = postgres.create_database("console")
    one = loopback_server(tmp_path / "one", url)
    two = loopback_server(tmp_path / "two", url)
    try:
        one.start()
        two.launch()
        two.wait_version(one.api().http.get("/readyz").json()["version"])
        for srv in (one, two):
            srv.wait_ready("127.0.0.1", srv.port)
        yield one, two
    finally:
        one.cleanup()
        two.cleanup()
        postgres.drop_database(url)


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium() as browser:
        tab = browser.new_page()
        errors = page_errors(tab)
        yield tab
        assert errors == []


def test_a_change_made_on_another_server_appears_without_a_reload(
        servers: tuple[ServerProcess, ServerProcess], page: Page) -> None:
    one, two = servers
    door = UnixDoor(one.api_socket)
    try:
        sign_in(page, f"{door.url}/console/", one.token())
        row = page.locator(f"tr[data-instance={SPOT}]")
        expect(row.locator(".mode")).to_have_text("normal")
        two.admin("options", SPOT, "--http-tokens", "required")  # through server two
        expect(row.locator(".mode")).to_have_text("security hardening")
        row.get_by_role("link", name=SPOT).click()
        page.get_by_role("tab", name="Without a token").click()
        expect(page.locator(".tree > li").first).to_contain_text("403 Forbidden")
        # ...and server one's data plane says the same to the instance.
        assert get(one.port, "/latest/meta-data/instance-id")[0] == 403
        two.admin("options", SPOT, "--http-tokens", "optional")
        expect(page.locator(".tree > li").first).not_to_contain_text("403")
        assert get(one.port, "/latest/meta-data/instance-id")[0] == 200
    finally:
        door.close()


def test_the_console_is_on_the_control_plane_only(servers: tuple[ServerProcess, ServerProcess]
                                                   ) -> None:
    """Instances reach the data plane's listeners, where no console is served."""
    one, _ = servers
    status, _, _ = get(one.port, "/console/")
    assert status == 404
    with socket.create_connection(("127.0.0.1", one.port)) as s:
        s.sendall(b"GET /v1/console/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 404")
