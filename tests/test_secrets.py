"""`Secrets.answer`: RAM credentials and PKCS#7 signatures as the data plane gets them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.dataplane.fulfil import Secrets, audience_of
from ecs_imds.errors import CredentialError
from ecs_imds.issuers import StaticIssuer
from ecs_imds.protocol.catalogue import Dynamic, Rendered
from ecs_imds.protocol.credentials import BuiltinIssuer, Credential
from ecs_imds.protocol.identity import (
    IdentitySigner,
    generate_signing_identity,
    verify,
    with_audience,
)
from ecs_imds.protocol.model import MetadataOptions

NOW = 1_800_000_000.0
SECRET = b"fleet secret for credentials, 32b"
DOCUMENT = b'{"zone-id":"cn-hangzhou-i","instance-id":"i-bp1secrets","region-id":"cn-hangzhou"}'
JSON, TEXT = b"application/json", b"text/plain; charset=utf-8"

_IDENTITY = generate_signing_identity(now=NOW)
SIGNER = IdentitySigner(*_IDENTITY)
CERT = _IDENTITY[1]


def instance(role: str | None = "EcsRole") -> Rendered:
    return Rendered(instance_id="i-bp1secrets", vpc_id="vpc-1", options=MetadataOptions(),
                    entries={}, document=DOCUMENT, role=role)


class FailingIssuer:
    """An issuer whose upstream is down, as a real one can be."""

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        raise CredentialError("upstream STS unreachable")


# --- credentials --------------------------------------------------------------------------

def test_credentials_are_rendered_as_json() -> None:
    issuer = BuiltinIssuer(SECRET)
    status, body, content_type = Secrets(issuer, SIGNER).answer(
        Dynamic("credentials", "EcsRole"), instance(), "", NOW)
    assert (status, content_type) == (200, JSON)
    parsed = json.loads(body)
    expected = issuer.issue("i-bp1secrets", "EcsRole", NOW)
    assert parsed["AccessKeyId"] == expected.access_key_id
    assert parsed["SecurityToken"] == expected.security_token
    assert parsed["Code"] == "Success"
    verdict = issuer.verify(parsed["AccessKeyId"], parsed["SecurityToken"], NOW)
    assert verdict is not None and verdict.instance_id == "i-bp1secrets"
    assert verdict.role == "EcsRole"


def test_credentials_without_an_issuer_are_not_found() -> None:
    status, _, _ = Secrets(None, SIGNER).answer(Dynamic("credentials", "EcsRole"), instance(),
                                                "", NOW)
    assert status == 404


def test_credentials_of_a_role_not_attached_are_not_found() -> None:
    secrets = Secrets(BuiltinIssuer(SECRET), SIGNER)
    assert secrets.answer(Dynamic("credentials", "Other"), instance(), "", NOW)[0] == 404
    assert secrets.answer(Dynamic("credentials", "EcsRole"), instance(None), "", NOW)[0] == 404


def test_issuer_failure_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="ecs_imds.dataplane.fulfil"):
        status, body, content_type = Secrets(FailingIssuer(), SIGNER).answer(
            Dynamic("credentials", "EcsRole"), instance(), "", NOW)
    assert status == 500
    assert content_type == TEXT
    assert b"unreachable" not in body  # the reason is for the operator, not the instance
    assert "upstream STS unreachable" in caplog.text
    assert "i-bp1secrets" in caplog.text and "EcsRole" in caplog.text


def test_static_issuer_fault_is_500_without_the_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "EcsRole.json").write_text('{"AccessKeyId": "STS.x", '
                                           '"AccessKeySecret": "leaky-secret"}')
    with caplog.at_level(logging.ERROR, logger="ecs_imds.dataplane.fulfil"):
        status, _, _ = Secrets(StaticIssuer(tmp_path), SIGNER).answer(
            Dynamic("credentials", "EcsRole"), instance(), "", NOW)
    assert status == 500
    assert "SecurityToken is missing" in caplog.text
    assert "leaky-secret" not in caplog.text


# --- pkcs7 --------------------------------------------------------------------------------

def test_pkcs7_signs_the_document() -> None:
    status, body, content_type = Secrets(None, SIGNER).answer(Dynamic("pkcs7"), instance(),
                                                              "", NOW)
    assert (status, content_type) == (200, TEXT)
    assert verify(DOCUMENT, body, CERT)


@pytest.mark.parametrize(("query", "audience"), [
    ("audience=sts.example.com", "sts.example.com"),
    ("audience=https%3A%2F%2Fsts.example.com%2F%3Fa%3D1", "https://sts.example.com/?a=1"),
    ("audience=a+b%20c", "a b c"),
    ("audience=%22quoted%22", '"quoted"'),
    ("audience=%E4%BD%A0%E5%A5%BD", "你好"),
    ("other=1&audience=x&more", "x"),
])
def test_pkcs7_signs_the_document_with_its_audience(query: str, audience: str) -> None:
    status, body, _ = Secrets(None, SIGNER).answer(Dynamic("pkcs7"), instance(), query, NOW)
    assert status == 200
    assert verify(with_audience(DOCUMENT, audience), body, CERT)
    assert not verify(DOCUMENT, body, CERT)


def test_pkcs7_reads_raw_utf8_the_data_plane_decoded_as_latin1() -> None:
    query = "audience=你好".encode().decode("latin-1")
    status, body, _ = Secrets(None, SIGNER).answer(Dynamic("pkcs7"), instance(), query, NOW)
    assert status == 200
    assert verify(with_audience(DOCUMENT, "你好"), body, CERT)


@pytest.mark.parametrize("query", [
    "audience=",
    "audience",
    "audience=" + "a" * 257,
    "audience=a%0Ab",
    "audience=%00",
    "audience=%FF",
    "audience=a&audience=b",
])
def test_pkcs7_bad_audience_is_400(query: str) -> None:
    status, body, content_type = Secrets(None, SIGNER).answer(Dynamic("pkcs7"), instance(),
                                                              query, NOW)
    assert (status, body, content_type) == (400, b"Bad Request", TEXT)


def test_pkcs7_ignores_unrelated_parameters() -> None:
    secrets = Secrets(None, SIGNER)
    plain = secrets.answer(Dynamic("pkcs7"), instance(), "", NOW)
    assert secrets.answer(Dynamic("pkcs7"), instance(), "x=1&y", NOW) == plain


def test_unknown_kind_is_not_found() -> None:
    status, _, _ = Secrets(BuiltinIssuer(SECRET), SIGNER).answer(Dynamic("other", "x"),
                                                                 instance(), "", NOW)
    assert status == 404


# --- audience_of --------------------------------------------------------------------------

def test_audience_of_without_audience() -> None:
    assert audience_of("") is None
    assert audience_of("x=1") is None


@given(st.text(min_size=1, max_size=256).filter(str.isprintable))
def test_audience_of_round_trips_percent_encoding(audience: str) -> None:
    assert audience_of("audience=" + quote(audience, safe="")) == audience
    assert audience_of("audience=" + quote_plus(audience)) == audience


@given(st.text(max_size=300))
def test_answer_never_raises_for_any_query(query: str) -> None:
    status, _, _ = Secrets(None, SIGNER).answer(Dynamic("pkcs7"), instance(), query, NOW)
    assert status in (200, 400)
