"""The demo fleet's whole crawl, as each demo instance sees it, kept as golden files.

A real `ecs-imds serve` runs on loopback with the demo fleet; 127.0.0.1, .2 and .3 are the
demo's three instances (listener aliases). For each instance and each way of asking — no
token, a valid token, another instance's token — every path the instance can reach (found
by crawling its own tree with a token) and a list of odd requests are sent over real
sockets, and every answer is written down: status line, headers (but `Date`) and body.

What changes from run to run is masked, after being checked: a token is `<token>` once its
shape is right, a RAM credential keeps its layout with each secret replaced by its shape,
a PKCS#7 signature becomes `<pkcs7 …: verifies>` once it has been verified against the
service's certificate. So any change to what an instance sees shows up as a readable diff.

    python tests/golden.py          # write tests/golden/ (make golden)
    pytest tests/test_golden.py     # compare
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from ecs_imds.demo import demo_fleet  # noqa: E402
from ecs_imds.protocol.identity import verify, with_audience  # noqa: E402
from server import ServerProcess, free_port  # noqa: E402

GOLDEN = HERE / "golden"
VPC = "vpc-demo000001"
SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
MODES = ("no-token", "token", "other-token")
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
AUDIENCE = "relying-party"

# Requests beyond the crawl: (method, target, extra header lines). A target is sent as is.
ODD: list[tuple[str, str, tuple[str, ...]]] = [
    ("GET", "/", ()),
    ("GET", "/latest", ()),
    ("GET", "/2016-01-01", ()),
    ("GET", "/2017-01-01/meta-data/", ()),
    ("GET", "/latest/meta-data", ()),
    ("GET", "/latest/meta-data/instance-id/", ()),
    ("GET", "/latest/meta-data//instance-id", ()),
    ("GET", "/latest/meta-data/no-such-item", ()),
    ("GET", "/latest/meta-data/instance-id?x=1", ()),
    ("GET", "/latest/meta-data/instance%2Did", ()),
    ("GET", "http://100.100.100.200/latest/meta-data/instance-id", ()),
    ("GET", "/latest/meta-data/ram/security-credentials/not-the-role", ()),
    ("GET", f"/latest/dynamic/instance-identity/pkcs7?audience={AUDIENCE}", ()),
    ("GET", "/latest/dynamic/instance-identity/pkcs7?audience=", ()),
    ("GET", "/latest/dynamic/instance-identity/pkcs7?audience=a&audience=b", ()),
    ("GET", "/latest/dynamic/instance-identity/pkcs7?audience=%ff", ()),
    ("HEAD", "/latest/meta-data/instance-id", ()),
    ("HEAD", "/latest/meta-data/", ()),
    ("POST", "/latest/meta-data/", ("Content-Length: 0",)),
    ("DELETE", "/latest/meta-data/instance-id", ()),
    ("GET", "/latest/api/token", ()),
    ("PUT", "/2016-01-01/api/token", (f"{TTL_HEADER}: 60",)),
    ("PUT", "/latest/meta-data/", (f"{TTL_HEADER}: 60",)),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: 60",)),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER.lower()}: 21600", "Content-Length: 0")),
    ("PUT", "/latest/api/token", ()),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: 0",)),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: 21601",)),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: ten",)),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: 60", "X-Forwarded-For: 10.0.0.1")),
    ("PUT", "/latest/api/token", (f"{TTL_HEADER}: 60", "Forwarded: for=10.0.0.1")),
]

_CREDENTIAL_SHAPES = {
    "AccessKeyId": re.compile(r"STS\.[A-Za-z0-9]{25}"),
    "AccessKeySecret": re.compile(r"[A-Za-z0-9]{44}"),
    "SecurityToken": re.compile(r"CAIS[A-Za-z0-9_-]+"),
    "Expiration": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
    "LastUpdated": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
}
_TOKEN_SHAPE = re.compile(rb"[A-Za-z0-9_-]{1,128}")


class Crawler:
    """One keep-alive connection from one source address, reopened when the server closes."""

    def __init__(self, port: int, source: str) -> None:
        self.port, self.source = port, source
        self.sock: socket.socket | None = None
        self.buffer = b""

    def request(self, method: str, target: str, headers: tuple[str, ...]
                ) -> tuple[str, list[tuple[str, str]], bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                                 source_address=(self.source, 0))
            self.buffer = b""
        lines = [f"{method} {target} HTTP/1.1", "Host: 100.100.100.200", *headers, "", ""]
        self.sock.sendall("\r\n".join(lines).encode("latin-1"))
        status, fields, body = self._response(method == "HEAD")
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in fields):
            self.close()
        return status, fields, body

    def _read(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def _response(self, head_only: bool) -> tuple[str, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *rest = head.decode("latin-1").split("\r\n")
        fields = [(k, v.strip()) for k, _, v in (line.partition(":") for line in rest)]
        length = 0 if head_only else int(dict((k.lower(), v) for k, v in fields)
                                          .get("content-length", "0"))
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, fields, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def crawl_paths(crawler: Crawler, token: str) -> list[str]:
    """Every path of the instance's tree under /latest/, found from the listings."""
    auth = (f"{TOKEN_HEADER}: {token}",)
    found, todo = [], ["/latest/"]
    while todo:
        path = todo.pop(0)
        found.append(path)
        if not path.endswith("/"):
            continue
        status, _, body = crawler.request("GET", path, auth)
        assert status.startswith("HTTP/1.1 200"), (path, status)
        todo += [path + name for name in body.decode().split("\n") if name]
    found.append("/latest/meta-data/all")
    return found


class Masker:
    """Replaces what differs from run to run, after checking it is what it should be."""

    def __init__(self, cert: bytes, documents: dict[str, bytes]) -> None:
        self.cert, self.documents = cert, documents

    def body(self, source: str, target: str, status: str, body: bytes) -> bytes | None:
        """The masked body, or None when the body is shown as it is."""
        if not status.startswith("HTTP/1.1 200"):
            return None
        if target.endswith("/api/token"):
            return b"<token>" if _TOKEN_SHAPE.fullmatch(body) else b"<TOKEN OF A BAD SHAPE>"
        if "/ram/security-credentials/" in target and not target.endswith("/"):
            return self._credential(body)
        if "/instance-identity/pkcs7" in target:
            document = self.documents[source]
            if "audience=" in target:
                document = with_audience(document, AUDIENCE)
                what = f"the document with audience {AUDIENCE}"
            else:
                what = "the document"
            shape = all(len(line) <= 64 for line in body.split(b"\n"))
            ok = shape and verify(document, body, self.cert)
            return f"<pkcs7 of {what}: {'verifies' if ok else 'DOES NOT VERIFY'}>".encode()
        return None

    @staticmethod
    def _credential(body: bytes) -> bytes:
        text = body.decode()
        for key, shape in _CREDENTIAL_SHAPES.items():
            match = re.search(rf'"{key}" : "([^"]*)"', text)
            mask = f"<{key}>" if match and shape.fullmatch(match[1]) else f"<BAD {key}>"
            text = re.sub(rf'("{key}" : )"[^"]*"', rf'\1"{mask}"', text)
        return text.encode()


def _show(body: bytes) -> str:
    text = body.decode("utf-8", "backslashreplace")
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


def record(lines: list[str], crawler: Crawler, masker: Masker, method: str, target: str,
           headers: tuple[str, ...]) -> None:
    status, fields, body = crawler.request(method, target, headers)
    shown = [h for h in headers if not h.startswith(TOKEN_HEADER + ":")]
    lines.append(f"### {method} {target}" + "".join(f" [{h}]" for h in shown))
    lines.append(status)
    masked = masker.body(crawler.source, target, status, body)
    for key, value in fields:
        if key.lower() == "date":
            continue
        if masked is not None and key.lower() == "content-length":
            value = "(masked)"
        lines.append(f"{key}: {value}")
    lines.append("")
    lines.append(_show(body if masked is None else masked))
    lines.append("")


def crawl(port: int, api: Any) -> dict[str, str]:
    """Golden file name → its text."""
    cert = api.request("GET", "/v1/identity/certificate").content
    crawlers = {s: Crawler(port, s) for s in SOURCES}
    tokens = {}
    documents = {}
    for s, c in crawlers.items():
        status, _, body = c.request("PUT", "/latest/api/token", (f"{TTL_HEADER}: 600",))
        assert status.startswith("HTTP/1.1 200"), status
        tokens[s] = body.decode()
        _, _, documents[s] = c.request("GET", "/latest/dynamic/instance-identity/document",
                                       (f"{TOKEN_HEADER}: {tokens[s]}",))
    masker = Masker(cert, documents)
    out = {}
    instances = [i["instance-id"] for i in demo_fleet()["instances"]]
    for n, (source, crawler) in enumerate(crawlers.items()):
        paths = crawl_paths(crawler, tokens[source])
        targets = paths + [p.replace("/latest/", "/2016-01-01/", 1) for p in paths]
        other = tokens[SOURCES[(n + 1) % len(SOURCES)]]
        for mode in MODES:
            auth: tuple[str, ...] = ()
            if mode == "token":
                auth = (f"{TOKEN_HEADER}: {tokens[source]}",)
            elif mode == "other-token":
                auth = (f"{TOKEN_HEADER}: {other}",)
            lines = [f"# {instances[n]} from {source}, {mode}", ""]
            for target in targets:
                record(lines, crawler, masker, "GET", target, auth)
            for method, target, extra in ODD:
                record(lines, crawler, masker, method, target, (*extra, *auth))
            out[f"{instances[n]}/{mode}.txt"] = "\n".join(lines)
    stranger = Crawler(port, "127.0.0.9")
    lines = ["# 127.0.0.9: no instance's address", ""]
    for method, target, extra in [("GET", "/latest/meta-data/", ()), *ODD[:3], *ODD[-8:-6]]:
        record(lines, stranger, masker, method, target, extra)
    out["unknown-source.txt"] = "\n".join(lines)
    for c in (*crawlers.values(), stranger):
        c.close()
    return out


def run(workdir: Path) -> dict[str, str]:
    """Start a server with the demo fleet in `workdir`, crawl it, stop it."""
    fleet = demo_fleet()
    aliases = {s: i["instance-id"] for s, i in zip(SOURCES, fleet["instances"], strict=True)}
    port = free_port()
    server = ServerProcess(workdir, fleet, [{"bind": f"127.0.0.1:{port}", "vpc-id": VPC,
                                              "aliases": aliases}],
                           limits={"rate": 0})
    try:
        server.start()
        server.wait_ready("127.0.0.1", port)
        return crawl(port, server.api())
    finally:
        server.cleanup()


def write(files: dict[str, str]) -> None:
    for old in GOLDEN.rglob("*.txt"):
        old.unlink()
    for name, text in files.items():
        path = GOLDEN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        files = run(Path(tmp))
    write(files)
    print(f"wrote {len(files)} golden files to {GOLDEN} "
          f"({sum(t.count('### ') for t in files.values())} answers)")
