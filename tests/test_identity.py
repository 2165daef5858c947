"""Instance identity (SPEC §5): Alibaba's documented openssl check, the CMS shape, audiences.

These run the real `openssl` binary (at /usr/bin/openssl here; CI must install it).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.protocol.identity import (
    IdentitySigner,
    generate_signing_identity,
    verify,
    with_audience,
)

# `make test` installs openssl; without it these tests fail rather than skip.
OPENSSL = shutil.which("openssl") or "openssl"

DOCUMENT = (b'{"zone-id":"cn-hangzhou-i","serial-number":"4acd2b47-b328-4762-852f-998f1a2c3b4d",'
            b'"instance-id":"i-bp13znx0m0me8cquu001","region-id":"cn-hangzhou",'
            b'"private-ipv4":"192.168.0.10","owner-account-id":"1609000000000000",'
            b'"mac":"00:16:3e:00:00:01","image-id":"aliyun_3_x64_20G_alibase_20210425.vhd",'
            b'"instance-type":"ecs.g6e.large"}')
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def identity() -> tuple[bytes, bytes]:
    return generate_signing_identity(now=NOW)


@pytest.fixture(scope="module")
def signer(identity: tuple[bytes, bytes]) -> IdentitySigner:
    return IdentitySigner(*identity)


@pytest.fixture(scope="module")
def cert_pem(identity: tuple[bytes, bytes]) -> bytes:
    return identity[1]


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=30,
                          check=False)


def alibaba_recipe(tmp_path: Path, document: bytes, body: bytes, cert_pem: bytes
                   ) -> subprocess.CompletedProcess[bytes]:
    """Alibaba's documented check, files laid out as its shell lines make them."""
    (tmp_path / "signature").write_bytes(
        b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n")
    (tmp_path / "document").write_bytes(document)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    return openssl("smime", "-verify", "-in", "signature", "-inform", "PEM",
                   "-content", "document", "-certfile", "cert.pem", "-noverify", cwd=tmp_path)


def der(body: bytes) -> bytes:
    return base64.b64decode(body.replace(b"\n", b""), validate=True)


# --- Alibaba's recipe ---------------------------------------------------------------------

def test_recipe_verifies_the_plain_document(tmp_path: Path, signer: IdentitySigner,
                                            cert_pem: bytes) -> None:
    result = alibaba_recipe(tmp_path, DOCUMENT, signer.sign(DOCUMENT), cert_pem)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr


def test_recipe_verifies_an_audience_document(tmp_path: Path, signer: IdentitySigner,
                                              cert_pem: bytes) -> None:
    document = with_audience(DOCUMENT, 'https://sts.example.com/"nonce"=42')
    result = alibaba_recipe(tmp_path, document, signer.sign(document), cert_pem)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr


def test_recipe_fails_for_a_tampered_document(tmp_path: Path, signer: IdentitySigner,
                                              cert_pem: bytes) -> None:
    tampered = DOCUMENT.replace(b"ecs.g6e.large", b"ecs.g6e.xlarge")
    result = alibaba_recipe(tmp_path, tampered, signer.sign(DOCUMENT), cert_pem)
    assert result.returncode != 0
    assert b"Verification successful" not in result.stderr


def test_recipe_fails_for_the_document_without_its_audience(
        tmp_path: Path, signer: IdentitySigner, cert_pem: bytes) -> None:
    signed = signer.sign(with_audience(DOCUMENT, "service-a"))
    result = alibaba_recipe(tmp_path, DOCUMENT, signed, cert_pem)
    assert result.returncode != 0


def test_recipe_fails_with_another_certificate(tmp_path: Path, signer: IdentitySigner) -> None:
    _, other_cert = generate_signing_identity(now=NOW)
    result = alibaba_recipe(tmp_path, DOCUMENT, signer.sign(DOCUMENT), other_cert)
    assert result.returncode != 0


# --- the shape of the signature -----------------------------------------------------------

def test_base64_lines_of_64(signer: IdentitySigner) -> None:
    body = signer.sign(DOCUMENT)
    lines = body.split(b"\n")
    assert len(lines) > 1
    assert all(len(line) == 64 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 64
    assert not body.endswith(b"\n") and b"\r" not in body
    der(body)  # decodes strictly


def test_no_certificate_is_embedded(tmp_path: Path, signer: IdentitySigner) -> None:
    (tmp_path / "sig.der").write_bytes(der(signer.sign(DOCUMENT)))
    result = openssl("pkcs7", "-inform", "DER", "-in", "sig.der", "-print_certs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"CERTIFICATE" not in result.stdout and b"subject" not in result.stdout


def test_embedded_content_is_the_document_and_digest_is_sha256(
        tmp_path: Path, signer: IdentitySigner, cert_pem: bytes) -> None:
    (tmp_path / "sig.der").write_bytes(der(signer.sign(DOCUMENT)))
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    result = openssl("cms", "-verify", "-inform", "DER", "-in", "sig.der", "-certfile",
                     "cert.pem", "-noverify", "-binary", "-out", "content", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "content").read_bytes() == DOCUMENT
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", "sig.der",
                      cwd=tmp_path)
    assert b"pkcs7-signedData" in printed.stdout
    assert b"sha256" in printed.stdout


def test_signatures_are_cached(signer: IdentitySigner) -> None:
    assert signer.sign(DOCUMENT) is signer.sign(DOCUMENT)


def test_cache_is_bounded(identity: tuple[bytes, bytes], cert_pem: bytes) -> None:
    small = IdentitySigner(*identity, cache_size=2)
    first = small.sign(b'{"n":1}')
    small.sign(b'{"n":2}')
    small.sign(b'{"n":3}')
    again = small.sign(b'{"n":1}')  # evicted, so signed afresh; still a valid signature
    assert again is not first
    assert verify(b'{"n":1}', again, cert_pem)


def test_signer_refuses_a_certificate_of_another_key(identity: tuple[bytes, bytes]) -> None:
    _, other_cert = generate_signing_identity(now=NOW)
    with pytest.raises(ValueError, match="does not belong"):
        IdentitySigner(identity[0], other_cert)


def test_generated_identity(identity: tuple[bytes, bytes]) -> None:
    cert = x509.load_pem_x509_certificate(identity[1])
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert cert.issuer == cert.subject
    assert cert.subject.rfc4514_string() == "CN=ecs-imds instance identity"
    start = datetime.fromtimestamp(NOW, UTC)
    assert cert.not_valid_before_utc <= start
    assert (cert.not_valid_after_utc - start).days >= 3649


# --- audience -----------------------------------------------------------------------------

def test_with_audience_inserts_before_the_final_brace() -> None:
    assert with_audience(b'{"a":"b"}', "svc") == b'{"a":"b","audience":"svc"}'
    assert with_audience(b"{}", "svc") == b'{"audience":"svc"}'


def test_with_audience_escapes_json() -> None:
    document = with_audience(DOCUMENT, 'say "hi" \\ back')
    assert document.endswith(b',"audience":"say \\"hi\\" \\\\ back"}')
    assert json.loads(document)["audience"] == 'say "hi" \\ back'


@pytest.mark.parametrize("audience", ["", "a" * 257, "line\nbreak", "nul\x00", "tab\t",
                                      "del\x7f", "esc\x1b[0m", "\u2028"])
def test_with_audience_refuses_bad_audiences(audience: str) -> None:
    with pytest.raises(ValueError):
        with_audience(DOCUMENT, audience)


def test_with_audience_accepts_the_limits() -> None:
    assert json.loads(with_audience(DOCUMENT, "a" * 256))["audience"] == "a" * 256
    assert json.loads(with_audience(DOCUMENT, "x"))["audience"] == "x"


@given(st.text(min_size=1, max_size=256).filter(str.isprintable))
def test_audience_round_trips(audience: str) -> None:
    parsed = json.loads(with_audience(DOCUMENT, audience))
    original = json.loads(DOCUMENT)
    assert parsed.pop("audience") == audience
    assert list(parsed.items()) == list(original.items())


# --- verify() -----------------------------------------------------------------------------

def test_verify_accepts_genuine_signatures(signer: IdentitySigner, cert_pem: bytes) -> None:
    body = signer.sign(DOCUMENT)
    assert verify(DOCUMENT, body, cert_pem)
    assert verify(DOCUMENT, body.decode(), cert_pem)
    armoured = b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n"
    assert verify(DOCUMENT, armoured, cert_pem)
    document = with_audience(DOCUMENT, "relying-service")
    assert verify(document, signer.sign(document), cert_pem)


def test_verify_rejects_a_tampered_document(signer: IdentitySigner, cert_pem: bytes) -> None:
    body = signer.sign(DOCUMENT)
    assert not verify(DOCUMENT.replace(b"10", b"11"), body, cert_pem)
    assert not verify(with_audience(DOCUMENT, "a"), body, cert_pem)
    assert not verify(DOCUMENT, signer.sign(with_audience(DOCUMENT, "a")), cert_pem)


def test_verify_rejects_another_certificate(signer: IdentitySigner) -> None:
    _, other_cert = generate_signing_identity(now=NOW)
    assert not verify(DOCUMENT, signer.sign(DOCUMENT), other_cert)


def test_verify_rejects_every_flipped_bit(signer: IdentitySigner, cert_pem: bytes) -> None:
    """No byte of the structure is slack: signed or not, changing it breaks verification."""
    raw = der(signer.sign(DOCUMENT))
    for index in range(len(raw)):
        for flip in (1, 2, 4, 8, 16, 32, 64, 128, 255):
            changed = bytearray(raw)
            changed[index] ^= flip
            assert not verify(DOCUMENT, base64.b64encode(bytes(changed)), cert_pem), (
                index, flip)


@pytest.mark.parametrize("flags", [(), ("-keyid",), ("-noattr",), ("-nosmimecap", "-md",
                                                                      "sha512")])
def test_verify_accepts_what_openssl_signs(tmp_path: Path, identity: tuple[bytes, bytes],
                                           flags: tuple[str, ...]) -> None:
    """Interoperability: the verifier is not merely the mirror of our own signer."""
    (tmp_path / "key.pem").write_bytes(identity[0])
    (tmp_path / "cert.pem").write_bytes(identity[1])
    (tmp_path / "document").write_bytes(DOCUMENT)
    result = openssl("cms", "-sign", "-binary", "-nodetach", "-nocerts", "-in", "document",
                     "-signer", "cert.pem", "-inkey", "key.pem", "-outform", "DER",
                     "-out", "sig.der", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = base64.b64encode((tmp_path / "sig.der").read_bytes())
    assert verify(DOCUMENT, body, identity[1])
    assert not verify(DOCUMENT + b" ", body, identity[1])


@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_verify_never_raises_on_garbage(garbage: str | bytes) -> None:
    assert verify(DOCUMENT, garbage, _IDENTITY[1]) is False
    assert verify(DOCUMENT, _SIGNER.sign(DOCUMENT), garbage if isinstance(garbage, bytes)
                  else garbage.encode()) is False


@given(st.binary(max_size=600))
def test_verify_never_raises_on_base64_garbage(garbage: bytes) -> None:
    assert verify(DOCUMENT, base64.b64encode(garbage), _IDENTITY[1]) is False


def test_verify_rejects_wrong_types(signer: IdentitySigner, cert_pem: bytes) -> None:
    body = signer.sign(DOCUMENT)
    assert not verify(DOCUMENT.decode(), body, cert_pem)  # type: ignore[arg-type]
    assert not verify(DOCUMENT, None, cert_pem)  # type: ignore[arg-type]
    assert not verify(DOCUMENT, body, None)  # type: ignore[arg-type]


# Hypothesis tests cannot take function-scoped fixtures; one identity serves them all.
_IDENTITY = generate_signing_identity(now=NOW)
_SIGNER = IdentitySigner(*_IDENTITY)


# --- a relying service checks the audience (issue 9 §9) ---------------------------------------
def test_verify_with_an_audience_needs_a_signature_for_exactly_it(
        signer: IdentitySigner) -> None:
    cert = signer.cert_pem
    for_a = signer.sign(with_audience(DOCUMENT, "service-a"))
    plain = signer.sign(DOCUMENT)
    assert verify(DOCUMENT, for_a, cert, audience="service-a")
    assert verify(with_audience(DOCUMENT, "service-a"), for_a, cert, audience="service-a")
    assert not verify(DOCUMENT, for_a, cert, audience="service-b")  # another audience
    assert not verify(with_audience(DOCUMENT, "service-a"), for_a, cert, audience="service-b")
    assert not verify(DOCUMENT, plain, cert, audience="service-a")  # made for none
    assert not verify(b"not json", for_a, cert, audience="service-a")
    assert not verify(b"[1]", for_a, cert, audience="service-a")


def test_verify_identity_command_checks_the_audience(tmp_path: Path,
                                                     signer: IdentitySigner) -> None:
    (tmp_path / "document").write_bytes(DOCUMENT)
    (tmp_path / "cert.pem").write_bytes(signer.cert_pem)
    (tmp_path / "signature").write_bytes(signer.sign(with_audience(DOCUMENT, "svc-a")))
    ecs_imds = str(Path(sys.executable).with_name("ecs-imds"))

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ecs_imds, "verify-identity", "--document",
                               str(tmp_path / "document"), "--signature",
                               str(tmp_path / "signature"), "--cert", str(tmp_path / "cert.pem"),
                               *extra], capture_output=True, text=True, timeout=60)

    ok = check("--audience", "svc-a")
    assert ok.returncode == 0 and "Verification successful" in ok.stdout
    other = check("--audience", "svc-b")
    assert other.returncode != 0 and "Verification failure" in other.stderr
    assert "Traceback" not in other.stderr
