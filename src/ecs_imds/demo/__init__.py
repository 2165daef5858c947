"""The demo fleet that `serve --demo` loads: three instances in one VPC (fleet.yaml)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

DEMO_VPC = "vpc-demo000001"


def demo_fleet() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        resources.files("ecs_imds.demo").joinpath("fleet.yaml").read_text())
    return doc
