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


def test_open_metrics(tmp_path: Path) -> None:
    assert load(config(tmp_path, "api: {open-metrics: true}\n")).api.open_metrics is True


@pytest.mark.parametrize(("text", "where"), [
    ("api: {open-metrics: sometimes}\n", "api.open-metrics"),
    ("api: {colour: blue}\n", "api"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        load(config(tmp_path, text))
    assert exc.value.field == where
