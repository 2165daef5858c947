"""The web console, served by the control plane at `/console/`: the fleet at a glance, what
any instance is served right now (its metadata tree, as the data plane decides it, with and
without a token), its access mode and the rest of its options changed with a confirmation
and the API's ETags, changes made elsewhere shown as they happen, and the audit log.

`pages` serves the page and its hand-written ES modules (`static/`), with no token: they
hold no data (`PREFIX` is what `create_app` leaves public). `api` adds the reads the pages
need under `/v1/console/`, behind the bearer token like the rest of `/v1`. Changes go
through the REST API like any client's.
"""

from __future__ import annotations

from fastapi import APIRouter

from ecs_imds.control.console import api, pages
from ecs_imds.control.console.pages import PREFIX

ROUTERS: tuple[APIRouter, ...] = (api.router, pages.router)

__all__ = ["PREFIX", "ROUTERS"]
