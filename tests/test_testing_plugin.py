"""The pytest plugin users get with the package (ecs_imds.testing), run as a user runs it:
pytest in a fresh directory (pytester), the plugin found through its entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from netns import require_root

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def example_files() -> dict[str, str]:
    """The worked example's files, exactly as docs/testing.md shows them."""
    blocks = re.findall(r"```python\n# file: (\S+)\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/testing.md lost its worked example"
    return {name: body for name, body in blocks}


def test_the_worked_example_passes_as_documented(pytester: pytest.Pytester) -> None:
    for name, body in example_files().items():
        pytester.path.joinpath(name).write_text(body)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_sandbox_example_passes_as_documented(pytester: pytest.Pytester) -> None:
    """A command and a callable in the sandbox fixture (root here: ip netns)."""
    require_root()
    (name, body), = re.findall(r"```python\n# sandbox-example: (\S+)\n(.*?)```",
                               DOCS.read_text(), re.S)
    pytester.path.joinpath(name).write_text(body)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_fleet_file_the_admin_calls_and_the_addresses(pytester: pytest.Pytester) -> None:
    fleet = {"defaults": {"region-id": "cn-beijing", "zone-id": "cn-beijing-a",
                          "owner-account-id": "1", "image-id": "img", "instance-type": "t"},
             "instances": [
        {"instance-id": f"i-plugin{n}", "ram-role": "app", "network-interfaces": [
            {"mac": f"00:16:3e:aa:00:0{n}", "network-interface-id": f"eni-plugin{n}",
             "vpc-id": "vpc-plugin", "vswitch-id": "vsw-plugin",
             "private-ipv4s": [f"10.0.0.{n}"], "vswitch-cidr-block": "10.0.0.0/24",
             "vpc-cidr-block": "10.0.0.0/16"}]} for n in (1, 2)]}
    pytester.path.joinpath("fleet.yaml").write_text(yaml.safe_dump(fleet))
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session")
        def ecs_imds_fleet():
            return "fleet.yaml"
    """)
    pytester.makepyfile(test_admin="""
        import json, os
        import pytest
        from ecs_imds.errors import MetadataError

        def test_addresses_stand_for_instances(ecs_imds):
            assert ecs_imds.addresses == {"127.0.0.1": "i-plugin1", "127.0.0.2": "i-plugin2"}
            assert os.environ["ECS_IMDS_ENDPOINT"] == ecs_imds.endpoint
            assert ecs_imds.client("i-plugin2").get("meta-data/instance-id") == b"i-plugin2"
            assert ecs_imds.client().get("meta-data/private-ipv4") == b"10.0.0.1"

        def test_options_events_keys_and_a_new_instance(ecs_imds):
            admin = ecs_imds.admin
            admin.set_options("i-plugin2", http_tokens="required")
            with pytest.raises(MetadataError) as refused:
                ecs_imds.client("i-plugin2").get("meta-data/instance-id")
            assert refused.value.status == 403
            assert ecs_imds.client("i-plugin2", token=True).get("meta-data/instance-id")
            event = admin.add_event("i-plugin1", "SystemMaintenance.Reboot", reason="test")
            events = json.loads(ecs_imds.client().get("maintenance/active-system-events"))
            assert [e["EventId"] for e in events] == [event]
            cert = admin.identity_certificate()
            admin.rotate_identity_key()
            assert admin.identity_certificate() != cert
            admin.rotate_token_key()
            doc = admin.instance("i-plugin2")
            doc["instance-id"] = "i-plugin3"
            doc["network-interfaces"][0].update(
                {"mac": "00:16:3e:aa:00:03", "network-interface-id": "eni-plugin3",
                 "private-ipv4s": ["10.0.0.3"]})
            doc.pop("revision", None)
            address = admin.add_instance(doc)
            assert ecs_imds.addresses[address] == "i-plugin3"
            assert ecs_imds.client("i-plugin3", token=True).get(
                "meta-data/private-ipv4") == b"10.0.0.3"

        def test_the_next_test_sees_the_fleet_as_it_started(ecs_imds):
            assert ecs_imds.client("i-plugin2").get("meta-data/instance-id") == b"i-plugin2"
            assert "127.0.0.3" not in ecs_imds.addresses
            with pytest.raises(MetadataError) as none:
                ecs_imds.client().get("maintenance/active-system-events")
            assert none.value.status == 404

        def test_another_server_for_one_test(ecs_imds_server_factory):
            other = ecs_imds_server_factory()     # the demo fleet
            assert other.client().get("meta-data/instance-id") == b"i-bp1demo0000000000001"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
