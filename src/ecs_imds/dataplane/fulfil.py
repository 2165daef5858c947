"""The answers that need secrets and the clock (SPEC §5): RAM credentials and the PKCS#7.

`Secrets` is the data plane's `DynamicSource`. It turns every failure into a status (400,
404, 500) because the caller is an instance: it gets a status, never an exception, and the
operator gets the reason in the log, never the credential or the signature.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

from prometheus_client.core import Metric

from ecs_imds.errors import CredentialError
from ecs_imds.metrics import counter
from ecs_imds.protocol.catalogue import JSON, TEXT, Dynamic, Rendered
from ecs_imds.protocol.credentials import Issuer, render
from ecs_imds.protocol.identity import IdentitySigner, with_audience

log = logging.getLogger(__name__)

_NOT_FOUND = (404, b"Not Found", TEXT)
_BAD_REQUEST = (400, b"Bad Request", TEXT)
_UNAVAILABLE = (500, b"Internal Server Error", TEXT)


def audience_of(query: str) -> str | None:
    """The percent-decoded `audience` of a query string; None when there is none.

    The data plane hands the raw query decoded as Latin-1, so it is turned back into its bytes
    before percent-decoding and the result is read as UTF-8. Raises ValueError for an
    audience given twice or one that is not UTF-8; other parameters are ignored.
    """
    try:
        raw = query.encode("latin-1")
    except UnicodeEncodeError:
        raw = query.encode()
    found: list[bytes] = []
    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"audience":
            found.append(unquote_to_bytes(value.replace(b"+", b" ")))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError("audience given more than once")
    return found[0].decode("utf-8")


class Secrets:
    """RAM credentials from `issuer` (None: no role is ever served) and identity signatures."""

    def __init__(self, issuer: Issuer | None, signer: IdentitySigner) -> None:
        self.issuer = issuer
        self.signer = signer
        self.answers: Counter[tuple[str, int]] = Counter()  # (kind, status) → how many

    def answer(self, entry: Dynamic, caller: Rendered, query: str,
               now: float) -> tuple[int, bytes, bytes]:
        if entry.kind == "credentials":
            result = self._credentials(entry.arg, caller, now)
        elif entry.kind == "pkcs7":
            result = self._pkcs7(caller, query)
        else:
            result = _NOT_FOUND
        self.answers[(entry.kind, result[0])] += 1
        return result

    def metrics(self) -> Iterator[Metric]:
        yield counter("ecs_imds_secret_answers",
                      "RAM credentials and identity signatures served, by status",
                      ["kind", "code"], {(k, str(c)): n for (k, c), n in self.answers.items()})

    def _credentials(self, role: str, caller: Rendered, now: float
                     ) -> tuple[int, bytes, bytes]:
        if self.issuer is None or role != caller.role:
            return _NOT_FOUND
        try:
            credential = self.issuer.issue(caller.instance_id, role, now)
        except CredentialError as exc:
            log.error("no RAM credentials for instance %s role %s: %s",
                      caller.instance_id, role, exc)
            return _UNAVAILABLE
        return 200, render(credential), JSON

    def _pkcs7(self, caller: Rendered, query: str) -> tuple[int, bytes, bytes]:
        try:
            audience = audience_of(query)
            content = (caller.document if audience is None
                       else with_audience(caller.document, audience))
        except ValueError:
            return _BAD_REQUEST
        return 200, self.signer.sign(content), TEXT
