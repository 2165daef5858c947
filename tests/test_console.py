"""The console's server side: the fleet view (rows, filters, paging, kept current), the
served tree (the data plane's own answers, secrets blanked), the audit tail, and the page
with its security headers — against a real store and a real server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecs_imds.control.console import audit_log
from ecs_imds.control.console.fleetview import (
    DISABLED,
    HARDENED,
    NORMAL,
    Filter,
    FleetView,
    RowMaker,
    mode_of,
)
from ecs_imds.control.console.pages import ASSETS
from ecs_imds.control.console.served import HIDDEN, crawl
from ecs_imds.control.fleet import import_fleet
from ecs_imds.issuers.static import StaticIssuer
from ecs_imds.protocol.catalogue import Dynamic, Leaf, Rendered
from ecs_imds.protocol.credentials import BuiltinIssuer
from ecs_imds.protocol.model import FleetDefaults, Instance, effective
from ecs_imds.store.sqlite import SQLiteStore
from fleets import NOW, fleet_doc, plain_doc, snapshot_of
from server import ServerProcess, demo_server, get

STATIC = Path(__file__).parent.parent / "src/ecs_imds/control/console/static"


# -- the fleet view -------------------------------------------------------------------------
def numbered(n: int) -> dict[str, Any]:
    """Instance n of a fleet spread over two VPCs, three modes, some tags and roles."""
    doc = plain_doc()
    vpc = "vpc-rich0001" if n % 2 else "vpc-other0001"
    doc.update({"instance-id": f"i-view{n:05d}", "instance-name": f"view-{n}",
                "tags": {"team": f"t{n % 3}", **({"canary": "yes"} if n % 10 == 0 else {})}})
    nic = doc["network-interfaces"][0]
    nic.update({"mac": f"00:16:3e:77:{n // 256:02x}:{n % 256:02x}", "vpc-id": vpc,
                "network-interface-id": f"eni-view{n:05d}",
                "private-ipv4s": [f"10.0.{n // 250}.{n % 250 + 2}"],
                "vswitch-cidr-block": f"10.0.{n // 250}.0/24"})
    options = [{}, {"http-tokens": "required"}, {"http-endpoint": "disabled"}][n % 3]
    if options:
        doc["metadata-options"] = options
    if n % 4 == 0:
        doc["ram-role"] = "view-role"
    if n % 5:
        doc["dedicated-host-id"] = f"dh-host{n % 5}"
    return doc


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.db")
    import_fleet(s, {"defaults": fleet_doc()["defaults"],
                     "instances": [numbered(n) for n in range(120)]})
    yield s
    s.close()


def every_page(view: FleetView, flt: Filter, size: int) -> list[str]:
    ids: list[str] = []
    page = view.table().page(flt, size)
    while True:
        ids += [row.instance_id for row in page.rows]
        if page.next_after is None:
            return ids
        page = view.table().page(flt, size, after=page.next_after)


def test_rows_agree_with_the_model_for_every_instance(store: SQLiteStore) -> None:
    """Rows are read from raw documents for speed: they must say what the model says."""
    defaults = FleetDefaults.from_doc(store.load_defaults())
    table = FleetView(store).table()
    assert len(table.rows) == 120
    for stored in store.load_instances():
        inst = Instance.from_doc(stored.doc)
        eff = effective(inst, defaults)
        row = table.rows[inst.instance_id]
        assert row.mode == mode_of(eff.options)
        assert row.hop_limit == eff.options.hop_limit
        assert row.tags_exposed == eff.options.tags_exposed
        assert row.role == eff.values.ram_role
        assert row.vpc_id == inst.vpc_id
        assert set(row.private) == set(inst.addresses())
        assert dict(row.tags) == inst.tags
        assert row.placement == inst.dedicated_host_id


@pytest.mark.parametrize(("flt", "expect"), [
    (Filter(), lambda n: True),
    (Filter(vpc_id="vpc-other0001"), lambda n: n % 2 == 0),
    (Filter(mode=HARDENED), lambda n: n % 3 == 1),
    (Filter(mode=DISABLED, vpc_id="vpc-rich0001"), lambda n: n % 3 == 2 and n % 2),
    (Filter(tag="canary"), lambda n: n % 10 == 0),
    (Filter(tag="team=t1"), lambda n: n % 3 == 1),
    (Filter(tag="team=t"), lambda n: False),
    (Filter(text="VIEW-1"), lambda n: str(n).startswith("1")),
    (Filter(text="view-role", mode=NORMAL), lambda n: n % 4 == 0 and n % 3 == 0),
    (Filter(text="10.0.0.7"), lambda n: str(n + 2).startswith("7")),
    (Filter(text="DH-HOST3", vpc_id="vpc-rich0001"), lambda n: n % 5 == 3 and n % 2),
])
def test_filters_and_paging(store: SQLiteStore, flt: Filter, expect: Any) -> None:
    view = FleetView(store)
    wanted = [f"i-view{n:05d}" for n in range(120) if expect(n)]
    assert every_page(view, flt, 7) == wanted
    first = view.table().page(flt, 7)
    assert first.total == len(wanted) and first.start == 0 and first.prev_before is None
    if first.next_after is not None:  # back from the second page is the first
        second = view.table().page(flt, 7, after=first.next_after)
        assert second.start == 7 and second.prev_before == second.rows[0].instance_id
        back = view.table().page(flt, 7, before=second.prev_before)
        assert back.rows == first.rows and back.start == 0


def test_the_view_follows_the_store_reading_only_what_changed(store: SQLiteStore) -> None:
    view = FleetView(store)
    before = view.table()
    assert view.table() is before  # nothing moved: the same table, no read
    changed = store.load_instances(["i-view00003"])[0]
    doc = dict(changed.doc, **{"metadata-options": {"http-tokens": "required"}})
    store.put_instance(doc, changed.revision)
    store.put_instance(numbered(500), 0)
    store.delete_instance("i-view00004", None)
    after = view.table()
    assert after.version == store.version() > before.version
    assert after.rows["i-view00003"].mode == HARDENED
    assert "i-view00500" in after.rows and "i-view00004" not in after.rows
    assert after.ids == sorted(after.rows)
    assert after.rows["i-view00005"] is before.rows["i-view00005"]  # not read again
    assert before.rows["i-view00003"].mode == NORMAL  # a published table never changes


def test_the_view_reads_everything_again_when_the_change_log_cannot_say(
        store: SQLiteStore) -> None:
    view = FleetView(store)
    assert view.table().rows["i-view00007"].name == "view-7"
    dump = store.dump()
    for doc in dump.instances:
        if doc["instance-id"] == "i-view00007":
            doc["instance-name"] = "restored"
    store.restore(dump)  # the change log starts again: it cannot reach back
    table = view.table()
    assert table.rows["i-view00007"].name == "restored"
    assert table.version == store.version() and len(table.rows) == 120


def test_new_defaults_change_the_rows_that_inherit_them(store: SQLiteStore) -> None:
    view = FleetView(store)
    assert view.table().rows["i-view00000"].mode == NORMAL
    defaults = dict(fleet_doc()["defaults"], **{"metadata-options": {"http-tokens": "required"}})
    store.write_fleet(defaults, [])
    table = view.table()
    assert table.rows["i-view00000"].mode == HARDENED  # inherits
    assert table.rows["i-view00002"].mode == DISABLED  # its own option stands


def test_a_tag_filter_matches_whole_tags_only() -> None:
    row = RowMaker(FleetDefaults()).row(numbered(1) | {"tags": {"a=b": "c", "ab": "x y"}})
    assert Filter(tag="a=b=c").apply([row]) == []  # key "a", value "b=c": no such tag
    assert Filter(tag="ab=x y").apply([row]) == [row]
    assert Filter(tag="ab").apply([row]) == [row]
    assert Filter(tag="a").apply([row]) == [] and Filter(tag="ab=x").apply([row]) == []


@pytest.mark.parametrize("bad", [{"metadata-options": {"http-tokens": "sometimes"}},
                                 {"metadata-options": {"http-tokens": ["required"]}},
                                 {"tags": ["a"]}, {"network-interfaces": "eth0"}])
def test_a_document_that_cannot_be_served_is_listed_as_such(bad: dict[str, Any]) -> None:
    row = RowMaker(FleetDefaults()).row(numbered(1) | bad)
    assert row.mode == "invalid" and row.instance_id == "i-view00001"
    assert Filter(text="view00001").apply([row]) == [row]


# -- the tree as served ---------------------------------------------------------------------
ISSUER = BuiltinIssuer(b"s" * 32)


@pytest.mark.parametrize("instance_id", ["i-bp13znx0m0me8cquu001", "i-plain0001"])
def test_the_crawl_reaches_every_path_and_shows_its_bytes(instance_id: str) -> None:
    snap = snapshot_of()
    caller = snap.by_id[instance_id]
    assert isinstance(caller, Rendered)
    answers, credentials = crawl(caller, snap, NOW, ISSUER, with_token=True)
    assert answers[0].path == "api/token" and answers[0].status == 200
    found = {a.path: a for a in answers[1:]}
    assert set(found) == set(caller.entries)  # every listed path, and `all`
    for path, entry in caller.entries.items():
        answer = found[path]
        assert answer.status == 200, path
        if isinstance(entry, Leaf):
            assert (answer.body, answer.content_type.encode()) == (entry.body,
                                                                   entry.content_type)
            assert not answer.hidden
        else:
            assert answer.hidden
    if caller.role:
        body = json.loads(found[f"meta-data/ram/security-credentials/{caller.role}"].body)
        issued = ISSUER.issue(instance_id, caller.role, NOW)
        assert body["AccessKeyId"] == issued.access_key_id == credentials.access_key_id
        assert body["AccessKeySecret"] == body["SecurityToken"] == HIDDEN
    assert all(a.body == b"" for p, a in found.items()
               if isinstance(caller.entries[p], Dynamic) and p.endswith("pkcs7"))


def test_a_credential_from_another_issuer_is_not_fetched(tmp_path: Path) -> None:
    """A static or command issuer is not asked for a page view: nothing of it is shown."""
    snap = snapshot_of()
    caller = snap.by_id["i-bp13znx0m0me8cquu001"]
    assert isinstance(caller, Rendered) and caller.role
    issuer = StaticIssuer(tmp_path)  # no <role>.json: asking it would fail
    answers, credentials = crawl(caller, snap, NOW, issuer, with_token=True)
    (answer,) = [a for a in answers if a.path.endswith(f"security-credentials/{caller.role}")]
    assert answer.status == 200 and answer.body == b"" and "issuer" in answer.hidden
    assert credentials is None


@pytest.mark.parametrize(("instance_id", "plain", "with_token"), [
    ("i-plain0001", 200, 200), ("i-hard0001", 403, 200), ("i-off0001", 403, 403)])
def test_without_a_token_the_crawl_stops_where_the_instance_would(
        instance_id: str, plain: int, with_token: int) -> None:
    snap = snapshot_of()
    caller = snap.by_id[instance_id]
    assert isinstance(caller, Rendered)
    answers, _ = crawl(caller, snap, NOW, ISSUER, with_token=False)
    assert answers[0].path == "" and answers[0].status == plain
    assert len(answers) == (1 if plain != 200 else len(caller.entries))
    served, _ = crawl(caller, snap, NOW, ISSUER, with_token=True)
    assert served[0].status == (200 if with_token == 200 else 403)  # the token PUT
    assert served[1].status == with_token


# -- the audit log's tail -------------------------------------------------------------------
def test_recent_audit_records_newest_first_filtered_and_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_log, "TAIL_BYTES", 4096)
    log = tmp_path / "audit.log"
    lines = [json.dumps({"time": f"t{n}", "actor": "admin", "action": "patch",
                         "target": f"i-a{n % 3}"}) for n in range(500)]
    log.write_text("\n".join(lines) + "\nnot json\n")
    newest = audit_log.recent(log, None, 5)
    assert [r["time"] for r in newest] == ["t499", "t498", "t497", "t496", "t495"]
    only = audit_log.recent(log, "i-a1", 1000)
    assert only and all(r["target"] == "i-a1" for r in only)
    assert only[0]["time"] == "t499" and len(only) < 100  # only the tail was read
    assert audit_log.recent(tmp_path / "none.log", None, 5) == []


# -- a live server: the console's answers against the data plane's --------------------------
WEB, HARDENED_ID, SPOT = (f"i-bp1demo000000000000{n}" for n in (1, 2, 3))
ALIASES = {"127.0.0.1": WEB, "127.0.0.2": HARDENED_ID, "127.0.0.3": SPOT}
SOURCE = {v: k for k, v in ALIASES.items()}
TOKEN_HEADERS = {"X-aliyun-ecs-metadata-token-ttl-seconds": "60"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = demo_server(tmp_path_factory.mktemp("console"), ALIASES)
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.api().http as client:  # with the admin token
        yield client


@pytest.mark.parametrize("instance_id", [WEB, HARDENED_ID, SPOT])
def test_every_answer_is_what_the_data_plane_sends(server: ServerProcess, api: httpx.Client,
                                                   instance_id: str) -> None:
    body = api.get(f"/v1/console/instances/{instance_id}").json()
    assert body["served"] and body["etag"] == f'"{body["revision"]}"'
    source = SOURCE[instance_id]
    status, _, token = get(server.port, "/latest/api/token", source, TOKEN_HEADERS, "PUT")
    assert status == 200
    for view, headers in (("with-token", {"X-aliyun-ecs-metadata-token": token.decode()}),
                          ("without-token", {})):
        for answer in body[view]:
            if answer["path"] == "api/token" or answer["hidden"]:
                continue
            code, head, sent = get(server.port, f"/latest/{answer['path']}", source, headers)
            assert code == answer["status"], (view, answer["path"])
            if code == 200:
                assert head["content-type"] == answer["content-type"], answer["path"]
                assert sent.decode() == answer["body"], answer["path"]


def test_credentials_show_key_id_and_expiry_never_the_secret(server: ServerProcess,
                                                             api: httpx.Client) -> None:
    raw = api.get(f"/v1/console/instances/{WEB}").text
    shown = json.loads(raw)["credentials"]
    path = f"/latest/meta-data/ram/security-credentials/{shown['role']}"
    served = json.loads(get(server.port, path, SOURCE[WEB])[2])
    assert shown["access-key-id"] == served["AccessKeyId"]
    assert shown["expiration"] == served["Expiration"]
    assert served["AccessKeySecret"] not in raw and served["SecurityToken"] not in raw


def test_a_mode_change_shows_in_the_next_crawl(server: ServerProcess,
                                               api: httpx.Client) -> None:
    etag = api.get(f"/v1/instances/{SPOT}").headers["ETag"]
    resp = api.patch(f"/v1/instances/{SPOT}/metadata-options", json={"HttpTokens": "required"},
                     headers={"If-Match": etag})
    assert resp.status_code == 200
    stale = api.patch(f"/v1/instances/{SPOT}/metadata-options",
                      json={"HttpTokens": "optional"}, headers={"If-Match": etag})
    assert stale.status_code == 412  # the second operator is told
    server.wait_version(api.get("/v1/console/version").json()["store"])
    body = api.get(f"/v1/console/instances/{SPOT}").json()
    assert body["instance"]["mode"] == HARDENED
    assert body["without-token"][0]["status"] == 403
    assert get(server.port, "/latest/meta-data/instance-id", SOURCE[SPOT])[0] == 403
    api.patch(f"/v1/instances/{SPOT}/metadata-options", json={"HttpTokens": "optional"})


def test_fleet_page_over_http(api: httpx.Client) -> None:
    page = api.get("/v1/console/fleet", params={"page-size": 2}).json()
    assert [i["instance-id"] for i in page["instances"]] == [WEB, HARDENED_ID]
    assert page["total"] == page["fleet-size"] == 3 and page["next-after"] == HARDENED_ID
    rest = api.get("/v1/console/fleet", params={"after": page["next-after"]}).json()
    assert [i["instance-id"] for i in rest["instances"]] == [SPOT]
    web = page["instances"][0]
    assert web["role"] == "demo-ecs-role" and web["tags-exposed"] and web["public"]
    assert api.get("/v1/console/fleet", params={"mode": "x"}).status_code == 400


def test_read_only_token_sees_the_console_as_read_only(server: ServerProcess,
                                                       api: httpx.Client) -> None:
    token = api.post("/v1/api-tokens", json={"Name": "viewer", "Scope": "read"}).json()["Token"]
    resp = httpx.get(f"{server.api_url}/v1/console/session",
                     headers={"Authorization": f"Bearer {token}"})
    assert resp.json() == {"name": "viewer", "scope": "read", "may-write": False}
    assert api.get("/v1/console/session").json()["may-write"] is True
    assert httpx.get(f"{server.api_url}/v1/console/fleet").status_code == 401


def test_the_page_needs_no_token_and_carries_a_strict_policy(server: ServerProcess) -> None:
    page = httpx.get(f"{server.api_url}/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, content_type in ASSETS.items():
        resp = httpx.get(f"{server.api_url}/console/{name if name != 'index.html' else ''}")
        assert resp.status_code == 200 and resp.headers["content-type"] == content_type
        assert resp.content == (STATIC / name).read_bytes()
    for missing in ("/console/secret.txt", "/console/..%2Fapi.py", "/console/%2e%2e/app.py"):
        assert httpx.get(server.api_url + missing).status_code == 404
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(ASSETS)  # every file served


def test_no_inline_script_or_style_in_the_page() -> None:
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script type="module" src="/console/app.js">']
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)  # no script body
    assert not re.search(r"\son[a-z]+=|\sstyle=|<style", html)
    for name in ASSETS:
        if name.endswith(".js"):
            text = (STATIC / name).read_text()
            assert "innerHTML" not in text and "eval(" not in text, name
            assert "document.cookie" not in text, name


def test_a_scoped_server_lists_the_fleet_and_says_what_it_serves(tmp_path: Path) -> None:
    srv = demo_server(tmp_path, ALIASES, scope={"hosts": ["kvm-1"]})
    try:
        api = srv.api().http
        assert api.put(f"/v1/instances/{WEB}/deployment",
                       json={"DedicatedHostId": "kvm-1"}).status_code == 200
        srv.wait_version(api.get("/v1/console/version").json()["store"])
        fleet = api.get("/v1/console/fleet").json()
        assert {i["instance-id"]: i["placement"] for i in fleet["instances"]} == {
            WEB: "kvm-1", HARDENED_ID: None, SPOT: None}
        served = api.get(f"/v1/console/instances/{WEB}").json()
        assert served["served"] and served["with-token"][1]["status"] == 200
        elsewhere = api.get(f"/v1/console/instances/{HARDENED_ID}").json()
        assert elsewhere["served"] is False and "with-token" not in elsewhere
        assert elsewhere["instance"]["mode"] == HARDENED  # still described, from the store
    finally:
        srv.cleanup()
