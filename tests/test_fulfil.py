"""`dataplane.fulfil`: RAM credentials and identity signatures, answered without ever
blocking the event loop (issue: a slow broker must make only its own requests wait).

Credentials come from real issuers: the builtin one, static files, and a real program run
by the command issuer (tests/test_credentials.py's script, with knobs to make it slow, fail
or hang). Each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.dataplane import fulfil
from ecs_imds.dataplane.fulfil import UNAVAILABLE, Answer, Fulfiller, Pending
from ecs_imds.errors import CredentialError
from ecs_imds.issuers import StaticIssuer
from ecs_imds.protocol.catalogue import JSON, TEXT, Leaf, Rendered
from ecs_imds.protocol.credentials import BuiltinIssuer, Credential
from ecs_imds.protocol.decide import (
    NeedCredentials,
    NeedSignature,
    Refuse,
    Request,
    audience_of,
    decide,
)
from ecs_imds.protocol.identity import (
    IdentitySigner,
    generate_signing_identity,
    verify,
    with_audience,
)
from ecs_imds.protocol.model import MetadataOptions
from fleets import NOW, key_ring
from test_credentials import BASE, LIFETIME, REFRESH, Program

SECRET = b"fleet secret for credentials, 32b"
DOCUMENT = b'{"zone-id":"cn-hangzhou-i","instance-id":"i-bp1secrets","region-id":"cn-hangzhou"}'
IDENTITY = generate_signing_identity(now=NOW)
SIGNER = IdentitySigner(*IDENTITY)
CERT = IDENTITY[1]
ROLE = "EcsRole"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def settled(answer: Answer | Pending) -> Answer:
    return await answer if isinstance(answer, asyncio.Future) else answer


# --- identity signatures, through `decide` ---------------------------------------------
def signature_need(query: str) -> Any:
    caller = Rendered(instance_id="i-bp1secrets", vpc_id="vpc-1", options=MetadataOptions(),
                      entries={"dynamic/instance-identity/pkcs7": _PKCS7},
                      document=DOCUMENT, role=None)
    snap = _snapshot()
    return decide(Request.of("GET", "/latest/dynamic/instance-identity/pkcs7", query), caller,
                  snap, NOW)


def _snapshot() -> Any:
    from ecs_imds.protocol.snapshot import Snapshot
    return Snapshot(version=1, by_address={}, by_id={}, key_ring=key_ring())


from ecs_imds.protocol.catalogue import Dynamic  # noqa: E402

_PKCS7 = Dynamic("pkcs7")


def sign(query: str) -> Answer:
    need = signature_need(query)
    assert isinstance(need, NeedSignature)

    async def go() -> Answer:
        return await settled(Fulfiller(None, SIGNER).signature(need))
    return asyncio.run(go())


def test_pkcs7_signs_the_document() -> None:
    answer = sign("")
    assert isinstance(answer, Leaf) and answer.content_type == TEXT
    assert verify(DOCUMENT, answer.body, CERT)
    assert all(len(line) <= 64 for line in answer.body.split(b"\n"))


@pytest.mark.parametrize(("query", "audience"), [
    ("audience=sts.example.com", "sts.example.com"),
    ("audience=https%3A%2F%2Fsts.example.com%2F%3Fa%3D1", "https://sts.example.com/?a=1"),
    ("audience=a+b%20c", "a b c"),
    ("audience=%22quoted%22", '"quoted"'),
    ("audience=%E4%BD%A0%E5%A5%BD", "你好"),
    ("other=1&audience=x&more", "x"),
    ("audience=你好".encode().decode("latin-1"), "你好"),  # raw UTF-8, read as Latin-1
])
def test_pkcs7_signs_the_document_with_its_audience(query: str, audience: str) -> None:
    answer = sign(query)
    assert isinstance(answer, Leaf)
    assert verify(with_audience(DOCUMENT, audience), answer.body, CERT)
    assert not verify(DOCUMENT, answer.body, CERT)


@pytest.mark.parametrize("query", ["audience=", "audience", "audience=" + "a" * 257,
                                   "audience=a%0Ab", "audience=%00", "audience=%FF",
                                   "audience=a&audience=b"])
def test_pkcs7_bad_audience_is_400(query: str) -> None:
    assert signature_need(query) == Refuse(400)


def test_pkcs7_ignores_unrelated_parameters() -> None:
    assert signature_need("x=1&y") == signature_need("")


def test_signatures_are_made_off_the_loop_and_cached() -> None:
    async def go() -> None:
        fulfiller = Fulfiller(None, SIGNER)
        need = NeedSignature("i-1", b'{"fresh":1}')
        first = fulfiller.signature(need)
        assert isinstance(first, asyncio.Future)  # made on a thread, not on the loop
        body = await first
        again = fulfiller.signature(need)
        assert again == body  # cached: a value at once
    run(go)


def test_an_instance_may_have_only_a_few_signatures_in_flight() -> None:
    async def go() -> None:
        fulfiller = Fulfiller(None, SIGNER)
        waits = [fulfiller.signature(NeedSignature("i-1", b'{"n":%d}' % n))
                 for n in range(fulfil.SIGNATURES_IN_FLIGHT)]
        assert all(isinstance(w, asyncio.Future) for w in waits)
        refused = fulfiller.signature(NeedSignature("i-1", b'{"n":99}'))
        assert isinstance(refused, Refuse) and refused.status == 429
        other = fulfiller.signature(NeedSignature("i-2", b'{"n":99}'))
        assert isinstance(other, asyncio.Future)  # another instance is not held back
        for w in (*waits, other):
            assert isinstance(await w, Leaf)
    run(go)


def test_audience_of_without_audience() -> None:
    assert audience_of("") is None
    assert audience_of("x=1") is None


@given(st.text(min_size=1, max_size=256).filter(str.isprintable))
def test_audience_of_round_trips_percent_encoding(audience: str) -> None:
    assert audience_of("audience=" + quote(audience, safe="")) == audience
    assert audience_of("audience=" + quote_plus(audience, safe="")) == audience


@given(st.text(max_size=40))
def test_a_query_never_raises_anything_but_a_verdict(query: str) -> None:
    assert isinstance(signature_need(query), NeedSignature | Refuse)


# --- RAM credentials ---------------------------------------------------------------------
NEED = NeedCredentials("i-bp1secrets", ROLE)


class FailingIssuer:
    """An issuer whose upstream is down, as a real one can be; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        self.calls += 1
        raise CredentialError("upstream STS unreachable")


def test_builtin_credentials_are_made_on_the_spot() -> None:
    issuer = BuiltinIssuer(SECRET)
    fulfiller = Fulfiller(issuer, SIGNER)
    answer = fulfiller.credentials(NEED, NOW)
    assert isinstance(answer, Leaf) and answer.content_type == JSON
    parsed = json.loads(answer.body)
    expected = issuer.issue("i-bp1secrets", ROLE, NOW)
    assert parsed["AccessKeyId"] == expected.access_key_id
    assert parsed["Code"] == "Success"
    assert fulfiller.credentials(NEED, NOW + 60) is answer  # kept until the next is due
    later = fulfiller.credentials(NEED, expected.expiration - issuer.refresh)
    assert isinstance(later, Leaf) and later != answer  # the next credential, from then on


def test_no_issuer_means_no_credentials() -> None:
    assert Fulfiller(None, SIGNER).credentials(NEED, NOW) == Refuse(404)


def test_a_failing_issuer_is_500_logged_once_and_retried_with_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        issuer = FailingIssuer()
        fulfiller = Fulfiller(issuer, SIGNER)
        with caplog.at_level(logging.WARNING, logger="ecs_imds.dataplane"):
            assert await settled(fulfiller.credentials(NEED, NOW)) is UNAVAILABLE
            for _ in range(20):  # within the backoff: 500 at once, the issuer left alone
                assert fulfiller.credentials(NEED, NOW + 0.5) is UNAVAILABLE
        assert issuer.calls == 1
        assert caplog.text.count("upstream STS unreachable") == 1
        assert await settled(fulfiller.credentials(NEED, NOW + 2)) is UNAVAILABLE
        assert issuer.calls == 2
        assert fulfiller.credentials(NEED, NOW + 3) is UNAVAILABLE  # backoff doubled: ~2 s
        assert issuer.calls == 2
    run(go)


def test_a_static_issuer_fault_is_500_without_the_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / f"{ROLE}.json").write_text('{"AccessKeyId": "STS.x", "AccessKeySecret": '
                                           '"TOPSECRET-value", oops')

    async def go() -> None:
        fulfiller = Fulfiller(StaticIssuer(tmp_path), SIGNER)
        with caplog.at_level(logging.WARNING, logger="ecs_imds.dataplane"):
            assert await settled(fulfiller.credentials(NEED, NOW)) is UNAVAILABLE
    run(go)
    assert "invalid JSON" in caplog.text and "TOPSECRET" not in caplog.text


# --- a credential program: slow, failing, hanging -----------------------------------------
def test_a_program_runs_once_and_is_cached_per_instance_and_role(program: Program) -> None:
    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(), SIGNER)
        first = await settled(fulfiller.credentials(NEED, NOW))
        assert isinstance(first, Leaf) and b"STS.key1" in first.body
        assert fulfiller.credentials(NEED, NOW + 3600) is first
        other = await settled(fulfiller.credentials(NeedCredentials("i-2", ROLE), NOW))
        assert isinstance(other, Leaf) and b"STS.key2" in other.body
        assert program.runs == 2
    run(go)


def test_concurrent_requests_wait_for_one_run(program: Program) -> None:
    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(), SIGNER)
        waits = [fulfiller.credentials(NEED, NOW) for _ in range(8)]
        assert all(isinstance(w, asyncio.Future) for w in waits)
        answers = [await w for w in waits]
        assert len({a.body for a in answers if isinstance(a, Leaf)}) == 1
        assert program.runs == 1
    run(go)


def test_a_slow_program_makes_only_its_own_requests_wait(program: Program) -> None:
    """While the program is held (gated), the loop goes on: another instance's cached
    credential is a value at once, and the waiting request's future is not done."""
    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(gated=True), SIGNER)
        ready = await settled(fulfiller.credentials(NeedCredentials("i-ready", ROLE), NOW))
        assert isinstance(ready, Leaf)  # the first run is not gated
        waiting = fulfiller.credentials(NEED, NOW)
        assert isinstance(waiting, asyncio.Future)
        for _ in range(20):
            await asyncio.sleep(0.01)  # the loop turns while the program is held
            assert fulfiller.credentials(NeedCredentials("i-ready", ROLE), NOW) is ready
        assert not waiting.done()
        program.open_gate()
        answer = await waiting
        assert isinstance(answer, Leaf) and b"STS.key2" in answer.body
    run(go)


def test_a_refresh_runs_in_the_background_while_the_old_credential_is_served(
        program: Program) -> None:
    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(gated=True), SIGNER, refresh_before=REFRESH)
        first = await settled(fulfiller.credentials(NEED, NOW))
        assert isinstance(first, Leaf)
        window = BASE + LIFETIME - REFRESH + 60
        assert fulfiller.credentials(NEED, window) is first  # starts the refresh
        assert fulfiller.credentials(NEED, window + 1) is first  # ... only once
        program.open_gate()
        for _ in range(6000):
            await asyncio.sleep(0.01)
            if program.runs == 2 and fulfiller.credentials(NEED, window + 2) is not first:
                break
        second = fulfiller.credentials(NEED, window + 2)
        assert isinstance(second, Leaf) and b"STS.key2" in second.body
        assert program.runs == 2
    run(go)


def test_a_failing_refresh_keeps_the_credential_until_it_expires(
        program: Program, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(), SIGNER, refresh_before=REFRESH)
        first = await settled(fulfiller.credentials(NEED, NOW))
        program.mode("exit")
        expires = BASE + LIFETIME
        with caplog.at_level(logging.WARNING, logger="ecs_imds.dataplane"):
            assert fulfiller.credentials(NEED, expires - 60) is first
            for _ in range(6000):
                await asyncio.sleep(0.01)
                if program.runs == 2 and not fulfiller._fetching:
                    break
            # failed: backing off, still serving the valid one, not running it per request
            for step in range(10):
                assert fulfiller.credentials(NEED, expires - 59.9 + step * 0.05) is first
        assert program.runs == 2
        assert "exited with code 1" in caplog.text and "TOPSECRET" not in caplog.text
    run(go)


def test_a_wait_is_bounded(program: Program) -> None:
    program.mode("sleep")  # prints nothing parsable and hangs until killed

    async def go() -> None:
        fulfiller = Fulfiller(program.issuer(timeout=5), SIGNER, wait_limit=0.2)
        waiting = fulfiller.credentials(NEED, NOW)
        assert isinstance(waiting, asyncio.Future)
        assert await waiting is UNAVAILABLE  # after wait_limit, while the program runs on
        again = fulfiller.credentials(NEED, NOW)  # waits for the same run, not a new one
        assert isinstance(again, asyncio.Future)
        assert await again is UNAVAILABLE
        fulfiller.close()
    run(go)


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return Program(tmp_path)
