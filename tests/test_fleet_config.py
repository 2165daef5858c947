"""Fleet-mode settings in the config file: the store (a URL, or a primary and a hot standby
with the change log's retention) and the scope (the hosts a server serves); bad values are
refused naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecs_imds.config import effective, load
from ecs_imds.errors import ValidationError
from ecs_imds.store.base import DEFAULT_RETENTION, StoreSettings

PRIMARY = "postgresql://ecs@primary/imds"
STANDBY = "postgresql://ecs@standby/imds"


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_serve_the_whole_fleet_from_one_store(tmp_path: Path) -> None:
    cfg = load(config(tmp_path, f"store: {PRIMARY}\n"))
    assert (cfg.store, cfg.store_read, cfg.scope) == (PRIMARY, None, None)
    assert cfg.log_retention == DEFAULT_RETENTION


def test_a_primary_a_standby_and_a_scope(tmp_path: Path) -> None:
    cfg = load(config(tmp_path, f"store: {{url: '{PRIMARY}', read-url: '{STANDBY}', "
                                "change-log-retention: 3600}\n"
                                "scope: {hosts: [kvm-017, dh-bp1abc.zone-b]}\n"))
    assert (cfg.store, cfg.store_read, cfg.log_retention) == (PRIMARY, STANDBY, 3600.0)
    assert cfg.scope == frozenset({"kvm-017", "dh-bp1abc.zone-b"})


def test_timeouts_pool_and_staleness_bound(tmp_path: Path) -> None:
    assert load(config(tmp_path, f"store: {PRIMARY}\n")).store_settings == StoreSettings()
    cfg = load(config(tmp_path, f"store: {{url: '{PRIMARY}', connect-timeout: 2, "
                                "statement-timeout: 60, pool-size: 4, stale-after: 5, "
                                "retry-max: 10}\n"))
    assert cfg.store == PRIMARY
    assert cfg.store_settings == StoreSettings(connect_timeout=2, statement_timeout=60,
                                               pool_size=4, stale_after=5, retry_max=10)
    assert effective(cfg)["store"]["pool-size"] == 4  # config check shows them


def test_the_command_line_store_wins(tmp_path: Path) -> None:
    cfg = load(config(tmp_path, f"store: {{url: '{PRIMARY}'}}\n"), store="sqlite:///x.db")
    assert cfg.store == "sqlite:///x.db"


@pytest.mark.parametrize(("text", "where"), [
    ("store: {url: x, colour: blue}\n", "store.colour"),
    ("store: {statement-timeout: 0}\n", "store.statement-timeout"),
    ("store: {pool-size: 1}\n", "store.pool-size"),
    ("store: {stale-after: 1}\n", "store.stale-after"),  # under twice the heartbeat
    ("store: [a]\n", "store"),
    (f"store: {{read-url: '{STANDBY}'}}\n", "store.read-url"),  # a standby of what?
    (f"store: {{url: 'sqlite:///x.db', read-url: '{STANDBY}'}}\n", "store.read-url"),
    (f"store: {{url: '{PRIMARY}', read-url: 'sqlite:///x'}}\n", "store.read-url"),
    ("store: {change-log-retention: -1}\n", "store.change-log-retention"),
    ("store: {change-log-retention: soon}\n", "store.change-log-retention"),
    ("scope: {hosts: []}\n", "scope"),
    ("scope: [h1]\n", "scope"),
    ("scope: {hosts: [h1], vpcs: [v]}\n", "scope"),
    ("scope: {hosts: ['*']}\n", "scope.hosts[0]"),
    ("scope: {hosts: [h1, '']}\n", "scope.hosts[1]"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        load(config(tmp_path, text))
    assert exc.value.field == where
