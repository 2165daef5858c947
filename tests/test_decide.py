"""Request → verdict (SPEC §1-4, §6, §8's rate limit): every answer `decide` can give, and the
tree it serves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.protocol import access
from ecs_imds.protocol.catalogue import JSON, OCTET, TEXT, Leaf
from ecs_imds.protocol.decide import (
    FLOODING,
    MintToken,
    NeedCredentials,
    NeedSignature,
    Request,
    decide,
)
from ecs_imds.protocol.identity import with_audience
from ecs_imds.protocol.model import MAX_TOKEN_TTL
from ecs_imds.protocol.ratelimit import RateLimiter
from ecs_imds.protocol.response import REASONS
from ecs_imds.protocol.snapshot import Snapshot, normalise_ip
from fleets import (
    CREDENTIALS_BODY,
    DISABLED_ID,
    DISABLED_IP,
    HARDENED_ID,
    NOW,
    OTHER_VPC,
    OTHER_VPC_ID,
    PKCS7_BODY,
    PLAIN_ID,
    RICH_ID,
    RICH_IP,
    RICH_IPV6,
    RICH_SECOND_NIC_IP,
    RICH_SECONDARY_IPS,
    ROLE,
    VPC,
    Response,
    answer,
    crawl,
    getter,
    instance_docs,
    key_ring,
    snapshot_of,
)

SNAP = snapshot_of()
TTL = "x-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN = "x-aliyun-ecs-metadata-token"


def call(method: str, path: str, who: str | None = RICH_ID, headers: dict[str, str] | None = None,
         now: float = NOW, snap: Snapshot = SNAP, limiter: RateLimiter | None = None,
         query: str = "") -> Response:
    caller = snap.by_id[who] if who is not None else None
    verdict = decide(Request.of(method, path, query, headers), caller, snap, now, limiter,
                     source=f"10.9.9.{len(who or '')}")
    return answer(verdict, snap, now)


def get(path: str, who: str | None = RICH_ID, **kw: Any) -> Response:
    return call("GET", path, who, **kw)


def token_for(who: str, ttl: int = 60, now: float = NOW, snap: Snapshot = SNAP) -> str:
    resp = call("PUT", "/latest/api/token", who, {TTL: str(ttl)}, now=now, snap=snap)
    assert resp.status == 200
    return resp.body.decode()


def with_token(token: str) -> dict[str, str]:
    return {TOKEN: token}


def assert_error(resp: Response, status: int) -> None:
    """An error says no more than its status."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.body == REASONS[status].encode()
    assert resp.content_type == TEXT
    assert resp.hop_limit is None


# --- versions and paths ------------------------------------------------------------------
def test_root_lists_the_versions() -> None:
    resp = get("/")
    assert (resp.status, resp.body, resp.content_type) == (200, b"2016-01-01\nlatest", TEXT)


@pytest.mark.parametrize("path", ["/latest", "/latest/", "/2016-01-01", "/2016-01-01/"])
def test_version_root_listing(path: str) -> None:
    resp = get(path)
    assert resp.status == 200
    assert resp.body == b"dynamic/\nmaintenance/\nmeta-data/\nuser-data\nvendor-data"
    assert get(path, PLAIN_ID).body == b"dynamic/\nmaintenance/\nmeta-data/"


def test_both_versions_serve_the_same_tree() -> None:
    rich = SNAP.by_id[RICH_ID]
    assert len(rich.entries) > 100
    for path in rich.entries:
        latest, old = get(f"/latest/{path}"), get(f"/2016-01-01/{path}")
        assert latest.status == 200, path
        assert (latest.status, latest.body, latest.content_type) == (
            old.status, old.body, old.content_type), path


@pytest.mark.parametrize("path", [
    "/2009-04-04/meta-data/instance-id", "/LATEST/meta-data/instance-id",
    "/meta-data/instance-id", "/latest2/meta-data/instance-id", "//latest/meta-data",
    "/1.0/", "/2016-01-02/meta-data/", "/latest/meta-data/instance-id/x",
    "/latest/meta-data/nothing", "/latest/meta-data/../meta-data/instance-id",
    "/latest//meta-data/instance-id", "/latest/meta-data/all/x", "/latest/api/tokens",
    "/2016-01-01/api/token", "/latest/meta-data/ram/security-credentials/OtherRole",
    f"/latest/meta-data/ram/security-credentials/{ROLE.lower()}",
    "/latest/meta-data/tags/instance/a", "/latest/meta-data/tags/instance/has space",
    "/latest/dynamic/instance-identity/Document",
])
def test_unknown_paths_are_404(path: str) -> None:
    assert_error(get(path), 404)


@pytest.mark.parametrize("item", [
    "meta-data/public-ipv4", "meta-data/eipv4", "meta-data/instance/spot/termination-time",
    "meta-data/instance/spot/", "meta-data/image/market-place/", "meta-data/ram/",
    "meta-data/ram/security-credentials/", "meta-data/ram/security-credentials",
    "meta-data/tags/", "meta-data/tags/instance/env", "meta-data/disks/",
    "meta-data/public-keys/", "meta-data/kms-server", "meta-data/wsus-server/",
    "meta-data/sub-private-ipv4-list", "user-data", "vendor-data",
    "maintenance/active-system-events",
])
def test_items_the_instance_does_not_have_are_404(item: str) -> None:
    assert get(f"/latest/{item}").status == 200  # the rich instance has it
    assert_error(get(f"/latest/{item}", PLAIN_ID), 404)


# --- listings and leaves -----------------------------------------------------------------------
@pytest.mark.parametrize("directory", ["meta-data", "meta-data/network/interfaces/macs",
                                       "meta-data/instance", "dynamic/instance-identity",
                                       "meta-data/ram/security-credentials", "maintenance"])
def test_directory_with_or_without_trailing_slash(directory: str) -> None:
    bare, slashed = get(f"/latest/{directory}"), get(f"/latest/{directory}/")
    assert bare.status == slashed.status == 200
    assert bare.body == slashed.body
    assert bare.content_type == TEXT
    assert not bare.body.endswith(b"\n") and bare.body


@pytest.mark.parametrize(("leaf", "value"), [
    ("meta-data/instance-id", RICH_ID.encode()),
    ("meta-data/private-ipv4", RICH_IP.encode()),
    (f"meta-data/ram/security-credentials/{ROLE}", CREDENTIALS_BODY),
    ("user-data", b"#cloud-config\nhostname: rich\n"),
])
def test_leaf_with_trailing_slash_returns_the_leaf(leaf: str, value: bytes) -> None:
    assert get(f"/latest/{leaf}/").body == get(f"/latest/{leaf}").body == value


def test_listing_format() -> None:
    resp = get("/latest/meta-data/")
    names = resp.body.decode().split("\n")
    assert names[:3] == ["instance-id", "instance/", "hostname"]
    assert "network/" in names and "public-keys/" in names and "mac" in names
    assert "all" not in names
    assert get("/latest/meta-data/ram/security-credentials/").body == ROLE.encode()
    assert get("/latest/meta-data/dns-conf/nameservers").body == (
        b"100.100.2.136\r\n100.100.2.138")


def test_content_types() -> None:
    assert get("/latest/meta-data/all").content_type == JSON
    assert get("/latest/dynamic/instance-identity/document").content_type == JSON
    assert get("/latest/maintenance/active-system-events").content_type == TEXT
    assert get(f"/latest/meta-data/ram/security-credentials/{ROLE}").content_type == JSON
    assert get("/latest/user-data").content_type == OCTET
    assert get("/latest/vendor-data").content_type == OCTET
    assert get("/latest/meta-data/instance-id").content_type == TEXT
    assert get("/latest/meta-data/").content_type == TEXT


def test_head_answers_like_get() -> None:
    for path in ("/", "/latest/meta-data/", "/latest/meta-data/hostname", "/latest/nothing"):
        head, got = call("HEAD", path), get(path)
        assert (head.status, head.body, head.content_type) == (
            got.status, got.body, got.content_type)


# --- meta-data/all against a crawl --------------------------------------------------------------
def _skip_credentials(path: str) -> bool:
    return "/ram/security-credentials/" in path


@pytest.mark.parametrize(("who", "version"), [(RICH_ID, "latest"), (RICH_ID, "2016-01-01"),
                                              (PLAIN_ID, "latest"), (OTHER_VPC_ID, "latest")])
def test_all_equals_a_crawl_of_meta_data(who: str, version: str) -> None:
    fetch = getter(SNAP, who)
    tree = crawl(fetch, f"/{version}/meta-data/", _skip_credentials)
    everything = fetch(f"/{version}/meta-data/all")
    assert everything.status == 200
    assert json.loads(everything.body) == tree
    if who == RICH_ID:
        assert tree["ram"] == {"security-credentials": {}}
        assert tree["network"]["interfaces"]["macs"]["00:16:3e:0a:00:01"]["ipv6s"] == (
            "[" + ",".join(RICH_IPV6) + "]")


def test_all_equals_a_crawl_with_a_token_in_hardened_mode() -> None:
    fetch = getter(SNAP, HARDENED_ID, with_token(token_for(HARDENED_ID)))
    tree = crawl(fetch, "/latest/meta-data/", _skip_credentials)
    assert json.loads(fetch("/latest/meta-data/all").body) == tree
    assert tree["instance-id"] == HARDENED_ID


@given(instance_docs())
def test_every_listed_child_answers_200(doc: dict[str, Any]) -> None:
    """Crawl everything an instance can see, from the version root down: listings never end
    with a newline and every child they name answers 200 (crawl asserts both)."""
    snap = snapshot_of({"defaults": SNAP_DEFAULTS, "instances": [doc]})
    fetch = getter(snap, doc["instance-id"])
    tree = crawl(fetch, "/latest/")
    assert set(tree) >= {"dynamic", "maintenance", "meta-data"}
    assert json.loads(fetch("/latest/meta-data/all").body) == crawl(
        fetch, "/latest/meta-data/", _skip_credentials)


SNAP_DEFAULTS = {"region-id": "cn-beijing", "zone-id": "cn-beijing-a", "owner-account-id": "1",
                 "image-id": "img", "instance-type": "ecs.t6"}


# --- dynamic entries ---------------------------------------------------------------------------
def verdict_of(path: str, who: str = RICH_ID, query: str = "",
               headers: dict[str, str] | None = None) -> object:
    return decide(Request.of("GET", path, query, headers), SNAP.by_id[who], SNAP, NOW)


def test_secrets_are_needs_for_the_data_plane_to_fulfil() -> None:
    assert verdict_of(f"/latest/meta-data/ram/security-credentials/{ROLE}") == \
        NeedCredentials(RICH_ID, ROLE)
    document = SNAP.by_id[RICH_ID].document
    assert verdict_of("/latest/dynamic/instance-identity/pkcs7") == \
        NeedSignature(RICH_ID, document)
    assert verdict_of("/latest/dynamic/instance-identity/pkcs7", query="audience=me") == \
        NeedSignature(RICH_ID, with_audience(document, "me"))
    resp = get(f"/latest/meta-data/ram/security-credentials/{ROLE}")
    assert (resp.status, resp.body, resp.content_type) == (200, CREDENTIALS_BODY, JSON)
    resp = get("/latest/dynamic/instance-identity/pkcs7", query="audience=me")
    assert (resp.status, resp.body) == (200, PKCS7_BODY)


@pytest.mark.parametrize("query", ["audience=", "audience=a&audience=b", "audience=%ff",
                                   "audience=" + "a" * 257, "audience=%0a"])
def test_a_bad_audience_is_400_before_anything_is_signed(query: str) -> None:
    assert_error(get("/latest/dynamic/instance-identity/pkcs7", query=query), 400)


def test_credentials_of_a_role_not_attached_are_not_asked_for() -> None:
    path = "/latest/meta-data/ram/security-credentials/"
    assert_error(get(path + "OtherRole"), 404)
    assert_error(get(path + ROLE, PLAIN_ID), 404)


def test_static_leaves_need_nothing() -> None:
    for path in ("/latest/meta-data/all", "/latest/dynamic/instance-identity/document", "/"):
        assert not isinstance(verdict_of(path), NeedCredentials | NeedSignature | MintToken)


# --- tokens: PUT /latest/api/token ---------------------------------------------------------------
@pytest.mark.parametrize(("who", "hop_limit"), [(RICH_ID, 3), (HARDENED_ID, 5), (PLAIN_ID, 1)])
def test_token_response(who: str, hop_limit: int) -> None:
    resp = call("PUT", "/latest/api/token", who, {TTL: "21600"})
    assert resp.status == 200
    assert resp.hop_limit == hop_limit  # the instance's http-put-response-hop-limit
    assert resp.headers == ((b"X-aliyun-ecs-metadata-token-ttl-seconds", b"21600"),)
    assert resp.content_type == TEXT
    assert resp.body.isascii() and 0 < len(resp.body) <= 128
    assert SNAP.key_ring.verify(resp.body.decode(), who, NOW + 21599)
    assert not SNAP.key_ring.verify(resp.body.decode(), who, NOW + 21600)


def test_get_responses_use_the_normal_ttl() -> None:
    assert get("/latest/meta-data/instance-id").hop_limit is None
    assert get("/latest/meta-data/instance-id", HARDENED_ID,
               headers=with_token(token_for(HARDENED_ID))).hop_limit is None


def test_token_put_with_a_trailing_slash() -> None:
    assert call("PUT", "/latest/api/token/", headers={TTL: "5"}).status == 200


@pytest.mark.parametrize("ttl", ["1", "60", "21599", "21600", "0600", "60 ", " 60", "60\t"])
def test_token_ttl_accepted(ttl: str) -> None:
    resp = call("PUT", "/latest/api/token", headers={TTL: ttl})
    assert resp.status == 200
    assert resp.headers[0][1] == str(int(ttl)).encode()
    token = resp.body.decode()
    assert SNAP.key_ring.verify(token, RICH_ID, NOW + int(ttl) - 1)
    assert not SNAP.key_ring.verify(token, RICH_ID, NOW + int(ttl))


@pytest.mark.parametrize("ttl", [None, "", "0", "00", "21601", "99999", "999999", "9999999",
                                 "-1", "+60", "1.5", "60s", "6 0", "\v60", "0x10", "1e3",
                                 "\u0666\u0660", "\uff16\uff10", "\u00b2", "sixty", "60,60"])
def test_token_ttl_missing_malformed_or_out_of_range_is_400(ttl: str | None) -> None:
    headers = {} if ttl is None else {TTL: ttl}
    assert_error(call("PUT", "/latest/api/token", headers=headers), 400)


@given(st.text(max_size=12))
def test_token_ttl_any_text(ttl: str) -> None:
    resp = call("PUT", "/latest/api/token", headers={TTL: ttl})
    valid = ttl.isascii() and ttl.isdigit() and 1 <= int(ttl) <= MAX_TOKEN_TTL
    assert resp.status == (200 if valid else 400)


@pytest.mark.parametrize("proxy", ["x-forwarded-for", "forwarded"])
def test_token_put_through_a_proxy_is_403(proxy: str) -> None:
    assert_error(call("PUT", "/latest/api/token", headers={TTL: "60", proxy: RICH_IP}), 403)
    # refused before the TTL is even looked at
    assert_error(call("PUT", "/latest/api/token", headers={proxy: ""}), 403)


def test_proxy_headers_on_a_get_do_not_change_the_caller() -> None:
    resp = get("/latest/meta-data/instance-id", headers={"x-forwarded-for": "10.0.0.20"})
    assert resp.body == RICH_ID.encode()


@pytest.mark.parametrize("path", ["/2016-01-01/api/token", "/2016-01-01/api/token/"])
def test_token_put_under_2016_is_403(path: str) -> None:
    assert_error(call("PUT", path, headers={TTL: "60"}), 403)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_the_token_path_are_405(method: str) -> None:
    resp = call(method, "/latest/api/token", headers={TTL: "60"})
    assert resp.status == 405
    assert resp.headers == ((b"Allow", b"PUT"),)
    # ... in hardened mode too, and with a valid token
    resp = call(method, "/latest/api/token", HARDENED_ID,
                with_token(token_for(HARDENED_ID)) | {TTL: "60"})
    assert resp.status == 405


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/latest/meta-data/", "/latest/meta-data/instance-id",
                                  "/latest/nothing", "/2016-01-01/meta-data/"])
def test_other_methods_elsewhere_are_405(method: str, path: str) -> None:
    resp = call(method, path, headers={TTL: "60"})
    assert resp.status == 405
    assert resp.headers == ((b"Allow", b"GET, HEAD"),)


# --- tokens: reads ------------------------------------------------------------------------------
def test_hardened_instance_without_token_is_403_everywhere() -> None:
    for path in ("/", "/latest/", "/latest/meta-data/instance-id", "/latest/meta-data/all",
                 "/latest/user-data", "/latest/nothing", "/2009-01-01/"):
        assert_error(get(path, HARDENED_ID), 403)


def test_hardened_instance_with_its_token_reads_everything() -> None:
    headers = with_token(token_for(HARDENED_ID))
    for path in ("/", "/latest/", "/latest/meta-data/instance-id", "/2016-01-01/meta-data/"):
        assert get(path, HARDENED_ID, headers=headers).status == 200
    assert get("/latest/meta-data/instance-id", HARDENED_ID,
               headers=headers).body == HARDENED_ID.encode()
    assert get("/latest/nothing", HARDENED_ID, headers=headers).status == 404


def test_normal_instance_reads_with_or_without_a_token() -> None:
    assert get("/latest/meta-data/instance-id").status == 200
    assert get("/latest/meta-data/instance-id",
               headers=with_token(token_for(RICH_ID))).status == 200


@pytest.mark.parametrize("reader", [RICH_ID, HARDENED_ID])
def test_token_of_another_instance_is_401_in_both_modes(reader: str) -> None:
    other = PLAIN_ID if reader == RICH_ID else RICH_ID
    assert_error(get("/latest/meta-data/instance-id", reader,
                     headers=with_token(token_for(other))), 401)


@pytest.mark.parametrize("reader", [RICH_ID, HARDENED_ID])
def test_expired_token_is_401_in_both_modes(reader: str) -> None:
    token = token_for(reader, ttl=10)
    path = "/latest/meta-data/instance-id"
    assert get(path, reader, headers=with_token(token), now=NOW + 9.999).status == 200
    assert_error(get(path, reader, headers=with_token(token), now=NOW + 10), 401)
    assert_error(get(path, reader, headers=with_token(token), now=NOW + 10**5), 401)


@pytest.mark.parametrize("reader", [RICH_ID, HARDENED_ID])
@pytest.mark.parametrize("bad", ["", "garbage", "A" * 64, "A" * 200, "\x00"])
def test_invalid_token_is_401_in_both_modes(reader: str, bad: str) -> None:
    for path in ("/", "/latest/meta-data/instance-id", "/latest/nothing"):
        assert_error(get(path, reader, headers=with_token(bad)), 401)


def test_token_from_another_key_ring_is_401() -> None:
    foreign = snapshot_of(ring=key_ring(b"z" * 32))
    token = token_for(RICH_ID, snap=foreign)
    assert_error(get("/latest/meta-data/instance-id", headers=with_token(token)), 401)


def test_token_survives_a_new_snapshot_with_the_same_keys() -> None:
    token = token_for(HARDENED_ID)
    later = snapshot_of(version=2)  # another server, or after a restart: same key ring
    assert get("/latest/meta-data/instance-id", HARDENED_ID, headers=with_token(token),
               snap=later).status == 200


# --- access: who may ask at all ------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "headers"), [
    ("GET", "/", {}),
    ("GET", "/latest/meta-data/instance-id", {}),
    ("GET", "/latest/nothing", {}),
    ("GET", "/2009-01-01/", {}),
    ("PUT", "/latest/api/token", {TTL: "60"}),
    ("PUT", "/latest/api/token", {}),
    ("POST", "/latest/api/token", {}),
    ("DELETE", "/latest/meta-data/", {}),
])
def test_disabled_endpoint_and_unknown_callers_get_403_for_everything(
        method: str, path: str, headers: dict[str, str]) -> None:
    own_token = SNAP.key_ring.mint(DISABLED_ID, NOW, 60)
    assert_error(call(method, path, DISABLED_ID, headers), 403)
    assert_error(call(method, path, DISABLED_ID, headers | with_token(own_token)), 403)
    assert_error(call(method, path, None, headers), 403)


def test_identify_by_vpc_and_address() -> None:
    assert SNAP.identify(VPC, RICH_IP).instance_id == RICH_ID  # type: ignore[union-attr]
    for ip in (*RICH_SECONDARY_IPS, RICH_SECOND_NIC_IP, *RICH_IPV6):
        assert SNAP.identify(VPC, ip).instance_id == RICH_ID  # type: ignore[union-attr]
    # the same address in another VPC is another instance
    assert SNAP.identify(OTHER_VPC, RICH_IP).instance_id == OTHER_VPC_ID  # type: ignore
    assert SNAP.identify(VPC, DISABLED_IP).instance_id == DISABLED_ID  # type: ignore
    assert SNAP.identify(VPC, "10.0.0.99") is None
    assert SNAP.identify("vpc-unknown", RICH_IP) is None
    assert SNAP.identify(OTHER_VPC, RICH_SECONDARY_IPS[0]) is None
    # a listener's aliases are configuration: they map a peer to an instance id
    assert SNAP.identify(VPC, "127.0.0.1", {"127.0.0.1": PLAIN_ID}).instance_id == PLAIN_ID  # type: ignore
    assert SNAP.identify(VPC, "127.0.0.1", {"127.0.0.1": "i-gone"}) is None
    assert SNAP.identify(VPC, RICH_IP, {"127.0.0.1": PLAIN_ID}).instance_id == RICH_ID  # type: ignore


@pytest.mark.parametrize(("peer", "expected"), [
    ("10.0.0.10", "10.0.0.10"), ("::ffff:10.0.0.10", "10.0.0.10"),
    ("2408:4000:1000:100:0:0:0:10", "2408:4000:1000:100::10"),
    ("2408:4000:1000:100::10%eth0", "2408:4000:1000:100::10"),
])
def test_peer_addresses_are_normalised_like_instance_addresses(peer: str, expected: str
                                                              ) -> None:
    assert normalise_ip(peer) == expected
    assert SNAP.identify(VPC, normalise_ip(peer)) is SNAP.by_id[RICH_ID]


def test_unknown_caller_through_identify_is_403() -> None:
    caller = SNAP.identify(VPC, "10.0.0.99")
    resp = answer(decide(Request.of("GET", "/latest/meta-data/instance-id"), caller, SNAP, NOW),
                  SNAP)
    assert_error(resp, 403)


# --- access: header names arrive lower-cased from the shell ---------------------------------------
def test_header_constants_are_lower_case() -> None:
    for name in (access.TOKEN_HEADER, access.TTL_HEADER, *access.PROXY_HEADERS):
        assert name == name.lower()
    assert access.TOKEN_HEADER == TOKEN and access.TTL_HEADER == TTL


def test_proxied() -> None:
    assert access.proxied({"x-forwarded-for": "1.2.3.4"})
    assert access.proxied({"forwarded": "for=1.2.3.4"})
    assert not access.proxied({"x-real-ip": "1.2.3.4", "via": "1.1 proxy"})


@pytest.mark.parametrize(("value", "expected"), [
    ("1", 1), ("21600", 21600), ("000001", 1), ("21601", None), ("0", None), (None, None),
    ("", None), ("0000001", None), ("1 ", 1), ("60\t", 60), (" 1", 1), ("1 1", None),
    ("٣", None), ("-0", None),
])
def test_parse_ttl(value: str | None, expected: int | None) -> None:
    assert access.parse_ttl(value, MAX_TOKEN_TTL) == expected


# --- rate limit -----------------------------------------------------------------------------------
def test_rate_limit_429_with_retry_after_and_per_instance() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    path = "/latest/meta-data/instance-id"
    for _ in range(3):
        assert get(path, limiter=limiter).status == 200
    resp = get(path, limiter=limiter)
    assert (resp.status, resp.body) == (429, b"Too Many Requests")
    assert resp.headers == ((b"Retry-After", b"1"),)
    # the token path and errors count too, and are limited the same way
    assert call("PUT", "/latest/api/token", headers={TTL: "60"}, limiter=limiter).status == 429
    # another instance is not slowed
    assert get(path, PLAIN_ID, limiter=limiter).status == 200
    # after waiting Retry-After, the instance may ask again
    assert get(path, limiter=limiter, now=NOW + 1).status == 200


def source_call(source: str, who: str | None, limiter: RateLimiter, now: float = NOW
                ) -> Response:
    caller = SNAP.by_id[who] if who else None
    return answer(decide(Request.of("GET", "/latest/meta-data/"), caller, SNAP, now, limiter,
                         source), SNAP)


@pytest.mark.parametrize("who", [None, DISABLED_ID])
def test_callers_that_are_no_instance_are_limited_per_source_address(who: str | None
                                                                     ) -> None:
    """SPEC §8: a source that is no instance (or a disabled one) gets 403 within its limit,
    then 429, and then its connections are closed; another source is not slowed."""
    limiter = RateLimiter(rate=1, burst=2)
    for _ in range(2):
        assert_error(source_call("10.0.9.1", who, limiter), 403)
    assert source_call("10.0.9.1", who, limiter).status == 429
    assert source_call("10.0.9.1", who, limiter).status == 429
    caller = SNAP.by_id[who] if who else None
    assert decide(Request.of("GET", "/"), caller, SNAP, NOW, limiter, "10.0.9.1") is FLOODING
    assert_error(source_call("10.0.9.2", who, limiter), 403)
    assert_error(source_call("10.0.9.1", who, limiter, NOW + 5), 403)


def test_a_flood_past_the_second_threshold_is_closed() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    caller = SNAP.by_id[RICH_ID]
    verdicts = [decide(Request.of("GET", "/latest/meta-data/"), caller, SNAP, NOW, limiter)
                for _ in range(10)]
    assert [getattr(v, "status", 200) for v in verdicts] == [200] * 5 + [429] * 5
    assert not any(getattr(v, "close", False) for v in verdicts)
    assert decide(Request.of("GET", "/"), caller, SNAP, NOW, limiter) is FLOODING
    # another instance is not touched by it
    assert isinstance(decide(Request.of("GET", "/"), SNAP.by_id[PLAIN_ID], SNAP, NOW, limiter),
                      Leaf)


# --- robustness ------------------------------------------------------------------------------
_methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "get", ""])
_paths = st.one_of(
    st.text(max_size=40).map(lambda s: "/" + s),
    st.lists(st.sampled_from(["latest", "2016-01-01", "meta-data", "api", "token", "", "..",
                              "instance", "all", "ram", "security-credentials", ROLE,
                              "dynamic", "instance-identity", "pkcs7", "user-data"]),
             max_size=6).map(lambda parts: "/" + "/".join(parts)),
)
_headers = st.dictionaries(st.sampled_from([TTL, TOKEN, "x-forwarded-for", "forwarded",
                                            "host"]), st.text(max_size=70), max_size=4)


@given(_methods, _paths, _headers, st.sampled_from([RICH_ID, PLAIN_ID, HARDENED_ID, DISABLED_ID,
                                                    None]))
def test_decide_never_raises(method: str, path: str, headers: dict[str, str],
                              who: str | None) -> None:
    resp = call(method, path, who, headers)
    assert resp.status in (200, 400, 401, 403, 404, 405)
    if resp.status != 200:
        assert resp.body == REASONS[resp.status].encode()
    if resp.hop_limit is not None:
        assert method == "PUT" and resp.status == 200
    if resp.status == 200 and method in ("GET", "HEAD") and who is not None:
        caller = SNAP.by_id[who]
        rest = path[1:].partition("/")[2].rstrip("/")
        entry = caller.entries.get(rest)
        if isinstance(entry, Leaf) and path != "/":
            assert resp.body == entry.body
