"""RAM role credentials (SPEC §5): the body's layout, the rotation schedule, the issuers."""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.errors import CredentialError
from ecs_imds.issuers import CommandIssuer, StaticIssuer
from ecs_imds.protocol.credentials import (
    BuiltinIssuer,
    Credential,
    format_time,
    render,
)

HOUR = 3600
LIFETIME, REFRESH = 6 * HOUR, 30 * 60
SECRET = b"fleet secret for credentials, 32b"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def epoch(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


# --- render -------------------------------------------------------------------------------

def test_render_is_byte_exact_spec_layout() -> None:
    credential = Credential(
        access_key_id="STS.NUxxxxxxxxxxxxx",
        access_key_secret="AKsecret",
        security_token="CAIStoken",
        expiration=epoch("2026-11-28T15:44:50Z"),
        last_updated=epoch("2026-11-28T09:44:50Z"),
    )
    assert render(credential) == (
        b'{\n'
        b'  "AccessKeyId" : "STS.NUxxxxxxxxxxxxx",\n'
        b'  "AccessKeySecret" : "AKsecret",\n'
        b'  "Expiration" : "2026-11-28T15:44:50Z",\n'
        b'  "SecurityToken" : "CAIStoken",\n'
        b'  "LastUpdated" : "2026-11-28T09:44:50Z",\n'
        b'  "Code" : "Success"\n'
        b'}'
    )


def test_render_escapes_values_as_json() -> None:
    credential = Credential('a"b', "c\\d", "e\nf", 0, 0)
    parsed = json.loads(render(credential))
    assert (parsed["AccessKeyId"], parsed["AccessKeySecret"], parsed["SecurityToken"]) == (
        'a"b', "c\\d", "e\nf")
    assert parsed["Expiration"] == "1970-01-01T00:00:00Z"


def test_repr_never_shows_secret_or_token() -> None:
    credential = Credential("STS.id", "the-secret", "CAIS-the-token", 0, 0)
    assert "the-secret" not in repr(credential)
    assert "the-token" not in repr(credential)


# --- BuiltinIssuer: shape and rotation ----------------------------------------------------

@pytest.fixture
def issuer() -> BuiltinIssuer:
    return BuiltinIssuer(SECRET, lifetime=LIFETIME, refresh=REFRESH)


def test_builtin_credential_shape(issuer: BuiltinIssuer) -> None:
    c = issuer.issue("i-bp13znx0m0me8cquu001", "EcsRamRole", NOW)
    assert c.access_key_id.startswith("STS.")
    assert len(c.access_key_id) >= 24 and c.access_key_id[4:].isalnum()
    assert c.security_token.startswith("CAIS")
    assert c.access_key_secret.isalnum() and len(c.access_key_secret) >= 30
    assert c.expiration - c.last_updated == LIFETIME
    assert c.last_updated <= NOW < c.expiration - REFRESH
    body = json.loads(render(c))
    assert body["Code"] == "Success"
    assert body["Expiration"] == format_time(c.expiration)


def test_rotation_across_the_refresh_window(issuer: BuiltinIssuer) -> None:
    instance, role = "i-rotate", "EcsRamRole"
    old = issuer.issue(instance, role, NOW)
    window_opens = old.expiration - REFRESH

    # Before the window: the same credential, whatever the second.
    assert issuer.issue(instance, role, old.last_updated) == old
    assert issuer.issue(instance, role, window_opens - 1) == old

    # Inside the window: the next one, issued as the window opens; the old one still valid.
    new = issuer.issue(instance, role, window_opens)
    assert new != old
    assert new.last_updated == window_opens
    assert new.expiration == window_opens + LIFETIME
    assert issuer.issue(instance, role, old.expiration - 1) == new
    verdict = issuer.verify(old.access_key_id, old.security_token, old.expiration - 1)
    assert verdict is not None and verdict.valid
    assert (verdict.issued, verdict.expires) == (old.last_updated, old.expiration)

    # After the old one's Expiration: still the new one; the old one verifies as expired.
    assert issuer.issue(instance, role, old.expiration + 60) == new
    verdict = issuer.verify(old.access_key_id, old.security_token, old.expiration)
    assert verdict is not None and not verdict.valid
    assert verdict.instance_id == instance and verdict.role == role
    fresh = issuer.verify(new.access_key_id, new.security_token, old.expiration)
    assert fresh is not None and fresh.valid


@given(now=st.integers(min_value=1_500_000_000, max_value=4_000_000_000))
def test_schedule_invariants(now: int) -> None:
    issuer = BuiltinIssuer(SECRET, lifetime=LIFETIME, refresh=REFRESH)
    c = issuer.issue("i-prop", "role", now)
    assert c.last_updated <= now < c.last_updated + (LIFETIME - REFRESH)
    assert c.expiration == c.last_updated + LIFETIME
    assert issuer.issue("i-prop", "role", now + 0.999) == c
    verdict = issuer.verify(c.access_key_id, c.security_token, now)
    assert verdict is not None and verdict.valid
    assert (verdict.instance_id, verdict.role) == ("i-prop", "role")


def test_two_issuers_with_the_same_secret_agree() -> None:
    a = BuiltinIssuer(SECRET)
    b = BuiltinIssuer(bytes(SECRET))
    for t in (NOW, NOW + 5 * HOUR + 1234, NOW + 3 * 86400):
        assert a.issue("i-1", "role", t) == b.issue("i-1", "role", t)
    c = b.issue("i-1", "role", NOW)
    assert a.verify(c.access_key_id, c.security_token, NOW) is not None


def test_different_instances_and_roles_get_different_credentials(issuer: BuiltinIssuer) -> None:
    credentials = [issuer.issue(i, r, NOW) for i in ("i-1", "i-2") for r in ("role-a", "role-b")]
    assert len({c.access_key_id for c in credentials}) == 4
    assert len({c.access_key_secret for c in credentials}) == 4
    assert len({c.security_token for c in credentials}) == 4
    # Offsets differ, so a fleet does not refresh in one burst.
    assert len({c.last_updated for c in credentials}) > 1


def test_different_secrets_give_different_credentials() -> None:
    a = BuiltinIssuer(SECRET).issue("i-1", "role", NOW)
    b = BuiltinIssuer(SECRET + b"!").issue("i-1", "role", NOW)
    assert a.access_key_id != b.access_key_id and a.access_key_secret != b.access_key_secret


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        BuiltinIssuer(b"short")
    with pytest.raises(ValueError):
        BuiltinIssuer(SECRET, lifetime=600, refresh=600)
    with pytest.raises(ValueError):
        BuiltinIssuer(SECRET, lifetime=0)


# --- BuiltinIssuer.verify -----------------------------------------------------------------

def test_verify_names_instance_and_role(issuer: BuiltinIssuer) -> None:
    c = issuer.issue("i-bp1abc", "Ops.Role-1", NOW)
    verdict = issuer.verify(c.access_key_id, c.security_token, NOW)
    assert verdict is not None
    assert (verdict.instance_id, verdict.role) == ("i-bp1abc", "Ops.Role-1")
    assert (verdict.issued, verdict.expires, verdict.valid) == (
        c.last_updated, c.expiration, True)


def test_verify_rejects_foreign_pairs(issuer: BuiltinIssuer) -> None:
    mine = issuer.issue("i-1", "role", NOW)
    other = issuer.issue("i-2", "role", NOW)
    foreign = BuiltinIssuer(b"another fleet's secret, 32 bytes").issue("i-1", "role", NOW)
    assert issuer.verify(foreign.access_key_id, foreign.security_token, NOW) is None
    assert issuer.verify(mine.access_key_id, other.security_token, NOW) is None
    assert issuer.verify(other.access_key_id, mine.security_token, NOW) is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw(token: str) -> bytes:
    body = token[4:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_verify_rejects_a_token_with_a_rewritten_payload(issuer: BuiltinIssuer) -> None:
    c = issuer.issue("i-1", "role", NOW)
    raw = _raw(c.security_token)
    forged = raw.replace(b"i-1", b"i-2")
    assert forged != raw
    assert issuer.verify(c.access_key_id, "CAIS" + _b64(forged), NOW) is None
    # Pushing the expiry out: the payload's third field, big-endian after version and issued.
    later = raw[:9] + (int.from_bytes(raw[9:17], "big") + 86400).to_bytes(8, "big") + raw[17:]
    assert issuer.verify(c.access_key_id, "CAIS" + _b64(later), NOW) is None


@given(data=st.data())
def test_verify_rejects_any_single_character_change(data: st.DataObject) -> None:
    issuer = BuiltinIssuer(SECRET)
    c = issuer.issue("i-1", "role", NOW)
    field = data.draw(st.sampled_from(["key", "token"]))
    text = c.access_key_id if field == "key" else c.security_token
    index = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    replacement = data.draw(st.sampled_from("AZaz09-_.+/=").filter(lambda ch: ch != text[index]))
    changed = text[:index] + replacement + text[index + 1:]
    key, token = (changed, c.security_token) if field == "key" else (c.access_key_id, changed)
    assert issuer.verify(key, token, NOW) is None


@given(key=st.text(max_size=40), token=st.text(max_size=300))
def test_verify_never_raises_on_arbitrary_text(key: str, token: str) -> None:
    assert BuiltinIssuer(SECRET).verify(key, token, NOW) is None


@given(body=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                    max_size=300),
       key=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                   min_size=25, max_size=25))
def test_verify_never_raises_on_well_shaped_garbage(body: str, key: str) -> None:
    assert BuiltinIssuer(SECRET).verify("STS." + key, "CAIS" + body, NOW) is None


def test_verify_rejects_non_strings(issuer: BuiltinIssuer) -> None:
    c = issuer.issue("i-1", "role", NOW)
    assert issuer.verify(c.access_key_id.encode(), c.security_token, NOW) is None  # type: ignore[arg-type]
    assert issuer.verify(c.access_key_id, None, NOW) is None  # type: ignore[arg-type]


# --- StaticIssuer -------------------------------------------------------------------------

STATIC = {"AccessKeyId": "STS.static", "AccessKeySecret": "static-secret-value",
          "SecurityToken": "CAIS-static"}


def test_static_issuer_reads_the_role_file(tmp_path: Path) -> None:
    (tmp_path / "EcsRole.json").write_text(json.dumps(
        {**STATIC, "Expiration": "2027-01-15T12:00:00Z", "LastUpdated": "2027-01-15T06:00:00Z"}))
    c = StaticIssuer(tmp_path).issue("i-1", "EcsRole", NOW)
    assert (c.access_key_id, c.access_key_secret, c.security_token) == (
        "STS.static", "static-secret-value", "CAIS-static")
    assert c.expiration == epoch("2027-01-15T12:00:00Z")
    assert c.last_updated == epoch("2027-01-15T06:00:00Z")


def test_static_issuer_without_expiration_rolls_a_window(tmp_path: Path) -> None:
    (tmp_path / "EcsRole.json").write_text(json.dumps(STATIC))
    c = StaticIssuer(tmp_path).issue("i-1", "EcsRole", NOW + 1234)
    assert c.last_updated == NOW  # on the hour
    assert c.expiration == NOW + LIFETIME


def test_static_issuer_from_a_mapping() -> None:
    issuer = StaticIssuer({"EcsRole": {**STATIC, "Expiration": "2027-01-15T12:00:00Z"}})
    assert issuer.issue("i-1", "EcsRole", NOW).access_key_id == "STS.static"
    with pytest.raises(CredentialError, match="no static credentials for role Other"):
        issuer.issue("i-1", "Other", NOW)


def test_static_issuer_checks_a_mapping_up_front() -> None:
    with pytest.raises(CredentialError, match="role EcsRole: field SecurityToken is missing"):
        StaticIssuer({"EcsRole": {"AccessKeyId": "a", "AccessKeySecret": "b"}})


def test_static_issuer_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError) as info:
        StaticIssuer(tmp_path).issue("i-1", "EcsRole", NOW)
    assert str(tmp_path / "EcsRole.json") in str(info.value)
    assert "no such credentials file" in str(info.value)


@pytest.mark.parametrize(("content", "expected"), [
    ('{"AccessKeyId": "STS.x", "AccessKeySecret": "leaky-secret"', "invalid JSON"),
    ('["leaky-secret"]', "expected a JSON object"),
    ('{"AccessKeyId": "STS.x", "AccessKeySecret": "leaky-secret"}', "SecurityToken is missing"),
    (json.dumps({**STATIC, "AccessKeySecret": 5}), "AccessKeySecret is not a non-empty string"),
    (json.dumps({**STATIC, "Expiration": "leaky-secret"}), "Expiration is not a time"),
    (json.dumps({**STATIC, "Code": "Forbidden"}), "Code is Forbidden"),
])
def test_static_issuer_names_the_file_and_the_fault(tmp_path: Path, content: str,
                                                    expected: str) -> None:
    path = tmp_path / "EcsRole.json"
    path.write_text(content)
    with pytest.raises(CredentialError) as info:
        StaticIssuer(tmp_path).issue("i-1", "EcsRole", NOW)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "leaky-secret" not in message


def test_static_issuer_refuses_a_role_that_is_not_a_file_name(tmp_path: Path) -> None:
    (tmp_path / "inner").mkdir()
    (tmp_path / "secret.json").write_text(json.dumps(STATIC))
    with pytest.raises(CredentialError, match="cannot name a credentials file"):
        StaticIssuer(tmp_path / "inner").issue("i-1", "../secret", NOW)


def test_static_issuer_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="not a directory"):
        StaticIssuer(tmp_path / "absent")


# --- CommandIssuer ------------------------------------------------------------------------

BASE = int(NOW)  # the script's credential n expires at BASE + n * LIFETIME

SCRIPT = """#!{python}
import json, os, pathlib, sys, time

state = pathlib.Path(os.environ["STATE"])
counter = state / "count"
count = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(count))
if os.environ.get("GATED") and count >= 2:
    deadline = time.time() + 20
    while not (state / "gate").exists() and time.time() < deadline:
        time.sleep(0.01)
mode = (state / "mode").read_text() if (state / "mode").exists() else "ok"
instance, role = os.environ["ECS_IMDS_INSTANCE_ID"], os.environ["ECS_IMDS_ROLE"]
doc = {{
    "AccessKeyId": f"STS.key{{count}}",
    "AccessKeySecret": f"TOPSECRET-{{instance}}-{{role}}-{{count}}",
    "SecurityToken": f"CAIS-token-{{count}}",
    "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                time.gmtime(int(os.environ["BASE"]) + count * {lifetime})),
    "Code": "Success",
}}
if mode == "exit":
    print(json.dumps(doc))
    print("upstream STS said no", file=sys.stderr)
    sys.exit(1)
if mode == "badjson":
    print('{{"AccessKeySecret": "' + doc["AccessKeySecret"] + '", oops')
    sys.exit(0)
if mode == "missing":
    del doc["SecurityToken"]
if mode == "noexpiration":
    del doc["Expiration"]
if mode == "expired":
    doc["Expiration"] = "2000-01-01T00:00:00Z"
if mode == "sleep":
    print(json.dumps(doc), flush=True)
    time.sleep(60)
if mode == "chatty":
    print("a" * 200_000)
if mode == "leaky":
    print("failed: AccessKeySecret=" + doc["AccessKeySecret"], file=sys.stderr)
    print("second line", file=sys.stderr)
    sys.exit(3)
if mode == "twolines":
    print("quota exceeded", file=sys.stderr)
    print("TOPSECRET " + doc["AccessKeySecret"], file=sys.stderr)
    sys.exit(4)
print(json.dumps(doc))
"""


class Program:
    """A credential program in tmp_path and the knobs the tests turn."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path
        self.path = tmp_path / "credential-process"
        self.path.write_text(SCRIPT.format(python=sys.executable, lifetime=LIFETIME))
        self.path.chmod(0o755)

    def issuer(self, gated: bool = False, **kwargs: float) -> CommandIssuer:
        env = {"STATE": str(self.state), "BASE": str(BASE)}
        if gated:
            env["GATED"] = "1"
        return CommandIssuer([str(self.path)], env=env, **kwargs)  # type: ignore[arg-type]

    @property
    def runs(self) -> int:
        counter = self.state / "count"
        return int(counter.read_text()) if counter.exists() else 0

    def mode(self, mode: str) -> None:
        (self.state / "mode").write_text(mode)

    def open_gate(self) -> None:
        (self.state / "gate").write_text("")


@pytest.fixture
def program(tmp_path: Path) -> Program:
    return Program(tmp_path)


def test_command_issuer_success(program: Program) -> None:
    c = program.issuer().issue("i-1", "EcsRole", NOW)
    assert c.access_key_id == "STS.key1"
    assert c.access_key_secret == "TOPSECRET-i-1-EcsRole-1"
    assert c.security_token == "CAIS-token-1"
    assert c.expiration == BASE + LIFETIME
    assert c.last_updated == BASE  # the program gave none: when it was fetched
    assert program.runs == 1


@pytest.mark.parametrize(("mode", "expected"), [
    ("exit", "exited with code 1; stderr: upstream STS said no"),
    ("badjson", "invalid JSON"),
    ("missing", "field SecurityToken is missing"),
    ("noexpiration", "field Expiration is missing"),
    ("expired", "already expired"),
])
def test_command_issuer_failures_never_echo_secrets(program: Program, mode: str,
                                                    expected: str) -> None:
    program.mode(mode)
    with pytest.raises(CredentialError) as info:
        program.issuer().issue("i-1", "EcsRole", NOW)
    message = str(info.value)
    assert expected in message
    assert "TOPSECRET" not in message
    assert "CAIS-token" not in message
    assert str(program.path) in message


def test_command_issuer_kills_a_program_that_hangs(program: Program) -> None:
    program.mode("sleep")
    with pytest.raises(CredentialError) as info:
        program.issuer(timeout=0.5).issue("i-1", "EcsRole", NOW)
    assert "no answer within 0.5 s" in str(info.value)
    assert "TOPSECRET" not in str(info.value)


def test_command_issuer_reports_a_program_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot run it"):
        CommandIssuer([str(tmp_path / "absent")]).issue("i-1", "EcsRole", NOW)


@pytest.mark.parametrize(("mode", "shown"), [
    ("leaky", "a line not shown: it may hold a secret"),
    ("twolines", "stderr: quota exceeded"),
])
def test_command_issuer_shows_only_a_safe_first_line_of_stderr(program: Program, mode: str,
                                                               shown: str) -> None:
    program.mode(mode)
    with pytest.raises(CredentialError) as info:
        program.issuer().issue("i-1", "EcsRole", NOW)
    message = str(info.value)
    assert shown in message
    assert "TOPSECRET" not in message and "second line" not in message


def test_command_issuer_bounds_what_a_program_prints(program: Program) -> None:
    program.mode("chatty")
    with pytest.raises(CredentialError, match="printed more than 65536 bytes"):
        program.issuer().issue("i-1", "EcsRole", NOW)
