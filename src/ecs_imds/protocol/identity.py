"""Instance identity (SPEC §5): the signing certificate, the audience, the PKCS#7 signature.

The signature is what Alibaba's documented `openssl smime -verify … -noverify` check accepts:
DER CMS SignedData, SHA-256, the document embedded, the signer certificate left out (relying
services hold it already), served as base64 in lines of 64 characters. `verify` is the same
check in Python for a relying service that has no `openssl` at hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

MAX_AUDIENCE = 256
LINE = 64
CERT_DAYS = 3650


def generate_signing_identity(common_name: str = "ecs-imds instance identity",
                              now: float | None = None) -> tuple[bytes, bytes]:
    """A new RSA-2048 key and a self-signed certificate valid for 10 years, both PEM.

    Self-signed because relying services pin this one certificate (Alibaba's check passes it
    with `-certfile … -noverify`); there is no chain to build.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def check_audience(audience: str) -> None:
    """SPEC §5: 1 to 256 printable characters; raises ValueError otherwise."""
    if not isinstance(audience, str):
        raise ValueError("audience must be text")
    if not 1 <= len(audience) <= MAX_AUDIENCE:
        raise ValueError(f"audience must be 1 to {MAX_AUDIENCE} characters")
    if not audience.isprintable():
        raise ValueError("audience must be printable characters")


def with_audience(document: bytes, audience: str) -> bytes:
    """The document with `,"audience":"X"` before its final `}`: what `?audience=X` signs.

    The audience lets a relying service bind a signature to itself (or to a nonce), so a
    signature shown to one service cannot be replayed to another.
    """
    check_audience(audience)
    end = document.rindex(b"}")
    head = document[:end]
    separator = b"" if head.rstrip().endswith(b"{") else b","
    value = json.dumps(audience, ensure_ascii=False).encode()
    return head + separator + b'"audience":' + value + document[end:]


def _lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\n".join(encoded[i:i + LINE] for i in range(0, len(encoded), LINE))


class IdentitySigner:
    """Signs identity documents with the service's key; caches recent signatures.

    Every instance asks for its own plain document's signature again and again, and an RSA
    signature costs about a millisecond; a bounded LRU keyed by the content makes repeats
    free while audience-bearing documents (often one-off nonces) cannot grow it without end.
    """

    def __init__(self, key_pem: bytes, cert_pem: bytes, cache_size: int = 1024) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("the identity signing key must be RSA or EC")
        cert = x509.load_pem_x509_certificate(cert_pem)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
                != key.public_key().public_bytes(serialization.Encoding.DER, spki)):
            raise ValueError("the identity certificate does not belong to the signing key")
        self._key = key
        self._cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def cached(self, content: bytes) -> bytes | None:
        """The signature of `content` if it was made recently; never signs."""
        with self._lock:
            found = self._cache.get(content)
            if found is not None:
                self._cache.move_to_end(content)
            return found

    def sign(self, content: bytes) -> bytes:
        """The body of `…/instance-identity/pkcs7` for `content`."""
        cached = self.cached(content)
        if cached is not None:
            return cached
        body = _lines(self._sign_der(content))
        with self._lock:
            self._cache[content] = body
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return body

    def _sign_der(self, content: bytes) -> bytes:
        options = [
            pkcs7.PKCS7Options.NoCerts,  # relying services hold the certificate already
            pkcs7.PKCS7Options.Binary,  # sign the bytes as they are, no CRLF conversion
            pkcs7.PKCS7Options.NoCapabilities,  # S/MIME capabilities mean nothing here
        ]
        return (pkcs7.PKCS7SignatureBuilder()
                .set_data(content)
                .add_signer(self._cert, self._key, hashes.SHA256())
                .sign(serialization.Encoding.DER, options))


# --- verification (for relying services) ---------------------------------------------------

def _oid(dotted: str) -> bytes:
    """The DER content octets of an object identifier."""
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray()
    for number in (40 * parts[0] + parts[1], *parts[2:]):
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


_DATA = _oid("1.2.840.113549.1.7.1")
_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
_CONTENT_TYPE = _oid("1.2.840.113549.1.9.3")
_MESSAGE_DIGEST = _oid("1.2.840.113549.1.9.4")
_HASHES: dict[bytes, type[hashes.HashAlgorithm]] = {
    _oid("2.16.840.1.101.3.4.2.1"): hashes.SHA256,
    _oid("2.16.840.1.101.3.4.2.2"): hashes.SHA384,
    _oid("2.16.840.1.101.3.4.2.3"): hashes.SHA512,
}
_RSA_SIGNATURES = {_oid("1.2.840.113549.1.1." + n) for n in ("1", "11", "12", "13")}
_EC_SIGNATURES = {_oid("1.2.840.10045." + n) for n in ("2.1", "4.3.2", "4.3.3", "4.3.4")}

_SEQUENCE, _SET, _OCTETS, _OID, _INTEGER, _NULL = 0x30, 0x31, 0x04, 0x06, 0x02, 0x05
_CONTEXT_0, _CONTEXT_1, _KEY_ID = 0xA0, 0xA1, 0x80
_MAX_SIGNATURE = 1 << 20


@dataclass(frozen=True, slots=True)
class _Tlv:
    """One DER element: its tag, where it starts, and where its content is."""

    tag: int
    head: int
    start: int
    end: int


class _Der:
    """Just enough strict DER to walk a CMS SignedData; anything unexpected raises ValueError.

    Strict on purpose: a relying service should accept exactly what a signer produces, not
    whatever a lenient parser can make sense of.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, pos: int, end: int) -> _Tlv:
        data = self.data
        if pos + 2 > end:
            raise ValueError("truncated")
        tag, length = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise ValueError("high tag number")
        start = pos + 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or start + count > end:
                raise ValueError("bad length")
            length = int.from_bytes(data[start:start + count], "big")
            start += count
        if start + length > end:
            raise ValueError("truncated")
        return _Tlv(tag, pos, start, start + length)

    def top(self) -> _Tlv:
        tlv = self.read(0, len(self.data))
        if tlv.end != len(self.data):
            raise ValueError("trailing bytes")
        return tlv

    def children(self, parent: _Tlv, tag: int) -> list[_Tlv]:
        """The elements inside `parent`, which must carry `tag`."""
        self.expect(parent, tag)
        out, pos = [], parent.start
        while pos < parent.end:
            child = self.read(pos, parent.end)
            out.append(child)
            pos = child.end
        return out

    def expect(self, tlv: _Tlv, tag: int) -> _Tlv:
        if tlv.tag != tag:
            raise ValueError(f"expected tag {tag:#x}, found {tlv.tag:#x}")
        return tlv

    def value(self, tlv: _Tlv, tag: int) -> bytes:
        return self.data[self.expect(tlv, tag).start:tlv.end]

    def whole(self, tlv: _Tlv) -> bytes:
        return self.data[tlv.head:tlv.end]

    def integer(self, tlv: _Tlv) -> int:
        raw = self.value(tlv, _INTEGER)
        if not raw:
            raise ValueError("empty integer")
        return int.from_bytes(raw, "big", signed=True)

    def algorithm(self, tlv: _Tlv) -> bytes:
        """An AlgorithmIdentifier's OID; its parameters must be absent or NULL."""
        items = self.children(tlv, _SEQUENCE)
        if len(items) == 2 and self.value(items[1], _NULL) == b"":
            items = items[:1]
        if len(items) != 1:
            raise ValueError("unexpected algorithm parameters")
        return self.value(items[0], _OID)


@dataclass(frozen=True, slots=True)
class _SignerInfo:
    version: int
    sid: _Tlv
    digest: bytes
    attributes: _Tlv | None
    algorithm: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class _SignedData:
    version: int
    digests: frozenset[bytes]
    content_type: bytes
    content: bytes | None
    signers: list[_SignerInfo]


def _decode_signature(signature_b64: bytes | str) -> bytes:
    """The DER of a served signature; PEM armour lines (as in Alibaba's recipe) are skipped."""
    text = signature_b64.encode("ascii") if isinstance(signature_b64, str) else signature_b64
    if not isinstance(text, bytes) or len(text) > _MAX_SIGNATURE:
        raise ValueError("not a signature")
    body = b"".join(line.strip() for line in text.splitlines()
                    if not line.strip().startswith(b"-----"))
    return base64.b64decode(body, validate=True)


def _optional(items: list[_Tlv], index: int, tag: int) -> tuple[_Tlv | None, int]:
    if index < len(items) and items[index].tag == tag:
        return items[index], index + 1
    return None, index


def _signed_data(der: _Der) -> _SignedData:
    content_info = der.children(der.top(), _SEQUENCE)
    if len(content_info) != 2 or der.value(content_info[0], _OID) != _SIGNED_DATA:
        raise ValueError("not a SignedData")
    (signed,) = der.children(content_info[1], _CONTEXT_0)
    items = der.children(signed, _SEQUENCE)
    if len(items) < 4:
        raise ValueError("short SignedData")
    digests = frozenset(der.algorithm(a) for a in der.children(items[1], _SET))
    encap = der.children(items[2], _SEQUENCE)
    if not 1 <= len(encap) <= 2:
        raise ValueError("bad encapsulated content")
    content = None
    if len(encap) == 2:
        (octets,) = der.children(encap[1], _CONTEXT_0)
        content = der.value(octets, _OCTETS)
    _, index = _optional(items, 3, _CONTEXT_0)  # certificates
    _, index = _optional(items, index, _CONTEXT_1)  # CRLs
    if index != len(items) - 1:
        raise ValueError("unexpected SignedData fields")
    signers = [_signer_info(der, info) for info in der.children(items[index], _SET)]
    return _SignedData(der.integer(items[0]), digests, der.value(encap[0], _OID), content,
                       signers)


def _signer_info(der: _Der, info: _Tlv) -> _SignerInfo:
    fields = der.children(info, _SEQUENCE)
    if len(fields) < 5:
        raise ValueError("short SignerInfo")
    version = der.integer(fields[0])
    der.expect(fields[1], {1: _SEQUENCE, 3: _KEY_ID}.get(version, -1))
    attributes, index = _optional(fields, 3, _CONTEXT_0)
    algorithm = der.algorithm(fields[index])
    signature = der.value(fields[index + 1], _OCTETS)
    _, index = _optional(fields, index + 2, _CONTEXT_1)  # unsigned attributes
    if index != len(fields):
        raise ValueError("unexpected SignerInfo fields")
    return _SignerInfo(version, fields[1], der.algorithm(fields[2]), attributes, algorithm,
                       signature)


def _names_certificate(der: _Der, signer: _SignerInfo, cert: x509.Certificate) -> bool:
    """Whether the SignerInfo's identifier is the certificate's (RFC 5652 §5.3)."""
    if signer.version == 3:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        return der.value(signer.sid, _KEY_ID) == ski.digest
    issuer, serial = der.children(signer.sid, _SEQUENCE)
    return (der.whole(issuer) == cert.issuer.public_bytes()
            and der.integer(serial) == cert.serial_number)


def _attribute(der: _Der, attributes: list[_Tlv], oid: bytes) -> bytes:
    """The single value (whole element) of the one signed attribute of type `oid`."""
    found = []
    for attribute in attributes:
        kind, values = der.children(attribute, _SEQUENCE)
        if der.value(kind, _OID) == oid:
            (value,) = der.children(values, _SET)
            found.append(der.whole(value))
    if len(found) != 1:
        raise ValueError("attribute missing or repeated")
    return found[0]


def _signed_bytes(der: _Der, signer: _SignerInfo, document: bytes, content_type: bytes,
                  algorithm: hashes.HashAlgorithm) -> bytes:
    """What the signature covers: the signed attributes if any (whose digest must be the
    document's), else the document itself."""
    if signer.attributes is None:
        return document
    attributes = der.children(signer.attributes, _CONTEXT_0)
    digest = hashlib.new(algorithm.name, document).digest()
    if not hmac.compare_digest(_attribute(der, attributes, _MESSAGE_DIGEST),
                               bytes([_OCTETS, len(digest)]) + digest):
        raise InvalidSignature
    if _attribute(der, attributes, _CONTENT_TYPE) != bytes([_OID, len(content_type)]) + \
            content_type:
        raise InvalidSignature
    # The signature covers the attributes re-tagged as the SET they are (RFC 5652 §5.4).
    return bytes([_SET]) + der.whole(signer.attributes)[1:]


def _check_signer(der: _Der, signed: _SignedData, signer: _SignerInfo, document: bytes,
                  cert: x509.Certificate) -> None:
    """Raises unless this SignerInfo, naming `cert`, signs `document` with its key."""
    if signer.digest not in signed.digests or not _names_certificate(der, signer, cert):
        raise InvalidSignature
    algorithm = _HASHES[signer.digest]()
    data = _signed_bytes(der, signer, document, signed.content_type, algorithm)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and signer.algorithm in _RSA_SIGNATURES:
        key.verify(signer.signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and signer.algorithm in _EC_SIGNATURES:
        key.verify(signer.signature, data, ec.ECDSA(algorithm))
    else:
        raise InvalidSignature


def _expected_version(signed: _SignedData) -> int:
    """SignedData's version as RFC 5652 §5.1 fixes it for what we accept."""
    if signed.content_type != _DATA or any(s.version == 3 for s in signed.signers):
        return 3
    return 1


def verify(document: bytes, signature_b64: bytes | str, cert_pem: bytes,
           audience: str | None = None) -> bool:
    """True if `signature_b64` (the body served at `…/pkcs7`) signs `document` with the key of
    `cert_pem`. Any embedded content must equal `document` too.

    With `audience`, the signature must have been made for exactly that audience
    (`…/pkcs7?audience=X`): `document` may be the plain document (the audience is inserted
    as the service inserts it) or the signed content itself (its `audience` must be X). A
    signature for another audience, or for none, fails — so a signature shown to one relying
    service cannot be replayed to another.

    Never raises: the signature comes from whoever presents it. The certificate is pinned,
    not validated (as with `-noverify` in Alibaba's recipe).
    """
    try:
        if not isinstance(document, bytes):
            return False
        if audience is not None:
            document = _for_audience(document, audience)
        cert = x509.load_pem_x509_certificate(cert_pem)
        der = _Der(_decode_signature(signature_b64))
        signed = _signed_data(der)
        if signed.version != _expected_version(signed):
            return False
        if signed.content is not None and not hmac.compare_digest(signed.content, document):
            return False
        for signer in signed.signers:
            try:
                _check_signer(der, signed, signer, document, cert)
            except (InvalidSignature, KeyError, ValueError):
                continue
            return True
        return False
    except (ValueError, TypeError, IndexError, KeyError, InvalidSignature,
            UnsupportedAlgorithm):
        return False


def _for_audience(document: bytes, audience: str) -> bytes:
    """The content a signature for `audience` signs; raises ValueError when `document`
    already names another audience."""
    parsed = json.loads(document)
    if not isinstance(parsed, dict):
        raise ValueError("not an identity document")
    if "audience" in parsed:
        if parsed["audience"] != audience:
            raise ValueError("signed for another audience")
        return document
    return with_audience(document, audience)
