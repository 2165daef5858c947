"""`ecs-imds admin migrate`: a fleet from SQLite to PostgreSQL and back, without loss; and
over the store of running servers, which take every copied secret without a restart."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from ecs_imds.clients.control import AdminClient
from ecs_imds.control.fleet import export_fleet, import_fleet
from ecs_imds.errors import AddressTaken
from ecs_imds.protocol.credentials import BuiltinIssuer
from ecs_imds.protocol.identity import verify
from ecs_imds.protocol.tokens import KeyRing
from ecs_imds.store.base import Changes
from ecs_imds.store.keys import (
    credential_secret,
    ensure_token_keys,
    identity_blob,
    identity_signer,
    rotate_token_key,
)
from ecs_imds.store.postgres import PostgresStore
from ecs_imds.store.sqlite import SQLiteStore
from pg import PostgresCluster, wait_until
from server import ECS_IMDS, ServerProcess, free_port, get
from test_scope import FLEET, ROLE, VPC, ip
from test_store_backends import OTHER_VPC, fleet, instance


def migrate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECS_IMDS, "--data-dir", str(data_dir), "admin", "migrate", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_sqlite_to_postgresql_and_back(tmp_path: Path, postgres: PostgresCluster) -> None:
    data = tmp_path / "data"
    source = SQLiteStore(data / "ecs-imds.db")
    doc = fleet() | {"instances": [instance(1, extra={"x": "网站"}),
                                   instance(2, **{"dedicated-host-id": "h2"}),
                                   instance(3, vpc=OTHER_VPC, ip="10.0.0.3")]}
    import_fleet(source, doc)
    now = int(time.time())
    ensure_token_keys(source, now - 100)
    rotate_token_key(source, now)
    identity_blob(source)
    source.secret("credentials", lambda: b"\x00\x01" * 16)
    token = KeyRing(source.token_keys()).mint("i-store00001", now, 600)
    before = source.dump()

    url = postgres.create_database()
    try:
        result = migrate(data, "--to", url)  # from the configured store (data dir)
        assert result.returncode == 0, result.stderr
        assert "copied 3 instances, 2 token keys and 2 secrets" in result.stderr
        pg = PostgresStore(url)
        assert pg.dump() == before
        # the copy's indexes are its own: placement, addresses, a change log from its version
        assert list(pg.revisions(frozenset({"h2"}))) == ["i-store00002"]
        assert pg.changes(pg.version()) == Changes(pg.version())
        with pytest.raises(AddressTaken):
            pg.put_instance(instance(9, ip=instance(2)["network-interfaces"][0][
                "private-ipv4s"][0]), None)
        assert KeyRing(pg.token_keys()).verify(token, "i-store00001", now + 1)

        # a second copy into a fleet is refused, unless told to replace it
        again = migrate(data, "--to", url)
        assert again.returncode != 0 and "already holds a fleet" in again.stderr
        assert migrate(data, "--to", url, "--replace").returncode == 0

        back = tmp_path / "back.db"
        result = migrate(data, "--from", url, "--to", f"sqlite://{back}")
        assert result.returncode == 0, result.stderr
        returned = SQLiteStore(back)
        assert returned.dump() == before
        assert export_fleet(returned) == export_fleet(source)
        pg.close()
    finally:
        postgres.drop_database(url)


def test_an_empty_or_unknown_source_is_refused(tmp_path: Path) -> None:
    result = migrate(tmp_path, "--from", f"sqlite://{tmp_path}/nothing.db",
                     "--to", f"sqlite://{tmp_path}/b.db")
    assert result.returncode != 0 and "empty" in result.stderr
    result = migrate(tmp_path, "--to", "mysql://x")
    assert result.returncode != 0 and "unsupported store URL" in result.stderr


def test_replace_under_running_servers_brings_every_secret_to_each(
        tmp_path: Path, postgres: PostgresCluster) -> None:
    """`migrate --replace` into the store two servers run on: without a restart, both sign
    identities with the copied key, serve RAM credentials derived from the copied secret,
    refuse API tokens of the old API secret, and rewrite their host's admin token file."""
    url = postgres.create_database("replaced")
    source = SQLiteStore(tmp_path / "source.db")
    servers: list[ServerProcess] = []
    try:
        import_fleet(source, FLEET)
        ensure_token_keys(source)
        cert = identity_signer(source).cert_pem
        issuer = BuiltinIssuer(credential_secret(source))
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            port = free_port()
            srv = ServerProcess(tmp_path / name, FLEET, [
                {"bind": f"127.0.0.1:{port}", "vpc-id": VPC}], store=url, limits={"rate": 0})
            srv.port = port
            srv.start() if not servers else srv.launch()
            servers.append(srv)
        old = [srv.token() for srv in servers]
        result = migrate(tmp_path, "--from", f"sqlite://{tmp_path}/source.db", "--to", url,
                         "--replace")
        assert result.returncode == 0, result.stderr
        for srv, token in zip(servers, old, strict=True):
            wait_until(lambda s=srv, t=token: s.token() != t, timeout=20)
            assert srv.api().http.get("/v1/defaults").status_code == 200
            assert AdminClient(srv.api_url, token).http.get("/v1/defaults").status_code == 401
            wait_until(lambda s=srv: signed_with(s, cert) and credential_of(s, issuer),
                       timeout=20)
    finally:
        for srv in servers:
            srv.cleanup()
        source.close()
        postgres.drop_database(url)


def signed_with(srv: ServerProcess, cert: bytes) -> bool:
    _, _, document = get(srv.port, "/latest/dynamic/instance-identity/document", ip(1))
    _, _, signature = get(srv.port, "/latest/dynamic/instance-identity/pkcs7", ip(1))
    return verify(document, signature, cert)


def credential_of(srv: ServerProcess, issuer: BuiltinIssuer) -> bool:
    status, _, body = get(srv.port, f"/latest/meta-data/ram/security-credentials/{ROLE}",
                          ip(1))
    assert status == 200, body
    served = json.loads(body)
    return issuer.verify(served["AccessKeyId"], served["SecurityToken"], time.time()) is not None
