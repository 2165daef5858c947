"""The control plane's settings in the config file: defaults, and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecs_imds.config import load
from ecs_imds.errors import ValidationError


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    api = load(config(tmp_path, "api: {bind: 127.0.0.1:9999}\n")).api
    assert api.bind == "127.0.0.1:9999" and api.open_metrics is False
    assert (api.token_lifetime, api.token_max_lifetime) == (30 * 86400, 365 * 86400)
    assert api.body_limit == 256 * 1024 * 1024


def test_settings(tmp_path: Path) -> None:
    api = load(config(tmp_path, "api: {unix: /run/x.sock, open-metrics: true, "
                                "token-lifetime: 60, token-max-lifetime: 120, "
                                "body-limit: 1000}\n")).api
    assert (api.unix, api.bind, api.open_metrics) == ("/run/x.sock", None, True)
    assert (api.token_lifetime, api.token_max_lifetime, api.body_limit) == (60, 120, 1000)


@pytest.mark.parametrize(("text", "where"), [
    ("api: {open-metrics: sometimes}\n", "api.open-metrics"),
    ("api: {colour: blue}\n", "api.colour"),
    ("api: {token-lifetime: 0}\n", "api.token-lifetime"),
    ("api: {token-lifetime: 100, token-max-lifetime: 10}\n", "api.token-lifetime"),
    ("api: {body-limit: lots}\n", "api.body-limit"),
    ("api: [bind]\n", "api"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        load(config(tmp_path, text))
    assert exc.value.field == where
