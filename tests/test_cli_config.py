"""The command line and the config file: every bad input is one line naming the file, the
setting and what to do, never a traceback; `config check`; `--version`; log formats."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml

from cli import ecs_imds, one_line_error


def write(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "data-dir: /tmp/x\nlisteners: [\n  - bind: 1\n")
    line = one_line_error(ecs_imds("--config", str(cfg), "serve"), f"{cfg}:", "fix the syntax")
    assert ":3:" in line or ":4:" in line


def test_a_word_where_a_number_belongs(tmp_path: Path) -> None:
    cfg = write(tmp_path, "poll-interval: fast\n")
    one_line_error(ecs_imds("--config", str(cfg), "serve"), str(cfg), "poll-interval",
                   "got 'fast'", "give a number")
    cfg = write(tmp_path, "workers: two\n")
    one_line_error(ecs_imds("--config", str(cfg), "serve"), str(cfg), "workers", "got 'two'",
                   "give a whole number")


def test_every_problem_at_once_one_line_each_in_one_notation(tmp_path: Path) -> None:
    cfg = write(tmp_path, yaml.safe_dump({
        "poll-interval": "fast", "limits": {"rate": -1, "rat": 3},
        "listeners": [{"bind": "127.0.0.1:8080", "vpc-id": "vpc-a"},
                      {"bind": "nowhere", "vpc": "x"}],
        "credentials": {"issuer": "magic"}}))
    result = ecs_imds("config", "check", str(cfg))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    named = ["poll-interval", "limits.rate", "limits.rat", "listeners[1].bind",
             "listeners[1].vpc", "listeners[1].vpc-id", "credentials.issuer"]
    assert len(lines) == len(named), lines
    for setting in named:
        assert sum(f"{cfg}: {setting}:" in line for line in lines) == 1, (setting, lines)
    assert result.stdout == ""


def test_a_sqlite_url_whose_directory_is_missing_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    cfg = write(tmp_path, f"store: sqlite://{missing}/fleet.db\n")
    one_line_error(ecs_imds("--config", str(cfg), "serve", "--demo"), "store",
                   str(missing), "does not exist")
    assert not missing.exists()  # no new empty store
    one_line_error(ecs_imds("--store", f"sqlite://{missing}/x.db", "serve", "--demo"),
                   "--store", "does not exist")


def test_a_port_in_use_is_one_line_and_no_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write(tmp_path, yaml.safe_dump({
            "data-dir": str(tmp_path / "data"), "api": {"unix": str(tmp_path / "api.sock")},
            "listeners": [{"bind": f"127.0.0.1:{port}", "vpc-id": "vpc-demo000001"}]}))
        result = ecs_imds("--config", str(cfg), "serve", "--demo")
        line = one_line_error(
            type(result)(result.args, result.returncode, result.stdout,
                         "\n".join(ln for ln in result.stderr.splitlines()
                                   if " INFO " not in ln)),
            str(cfg), "listeners[0].bind", f"127.0.0.1:{port}", "in use", "choose another")
        assert result.stdout == "", "the banner came before the error"
        assert line.startswith("Error: ")
        api = ecs_imds("--data-dir", str(tmp_path / "data"), "serve", "--demo", "--listen",
                       "127.0.0.1:0=vpc-x", "--api", f"127.0.0.1:{port}")
        assert api.stderr.splitlines()[-1] == (f"Error: --api: 127.0.0.1:{port} is in use; "
                                               "stop what listens there or choose another")
        assert "Traceback" not in api.stderr
        listen = ecs_imds("--data-dir", str(tmp_path / "data"), "serve", "--demo", "--listen",
                          f"127.0.0.1:{port}=vpc-x", "--api", "off")
        assert f"Error: --listen: 127.0.0.1:{port} is in use" in listen.stderr


def test_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(ecs_imds("--data-dir", str(blocker / "data"), "serve", "--demo"),
                   "data-dir", str(blocker / "data"), "choose another data-dir")


def test_admin_import_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "fleet.yaml"
    one_line_error(ecs_imds("--data-dir", str(tmp_path), "admin", "--api-token", "x",
                            "import", str(missing)), str(missing), "cannot be read")


def test_serve_fleet_with_a_bad_instance_names_file_and_field(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"instances": [{"instance-id": "i-x"}]}))
    one_line_error(ecs_imds("--data-dir", str(tmp_path / "d"), "serve", "--fleet", str(fleet),
                            "--listen", "127.0.0.1:0=vpc-x", "--api", "off"),
                   str(fleet), "instances[0]")


def test_config_check_prints_the_effective_settings(tmp_path: Path) -> None:
    cfg = write(tmp_path, yaml.safe_dump({
        "data-dir": str(tmp_path / "d"), "limits": {"rate": 5},
        "listeners": [{"bind": "100.100.100.200:80", "vpc-id": "vpc-a",
                       "aliases": {"127.0.0.2": "i-b"}}]}))
    result = ecs_imds("config", "check", str(cfg))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["limits.rate"] == 5.0 and shown["limits.burst"] == 2000.0
    assert shown["store"] == f"sqlite://{tmp_path}/d/ecs-imds.db"
    assert shown["listeners"] == [{"bind": "100.100.100.200:80", "vpc-id": "vpc-a",
                                   "aliases": {"127.0.0.2": "i-b"}}]
    assert shown["api"]["bind"] == "127.0.0.1:9180"
    assert shown["api"]["open-metrics"] is False
    assert f"{cfg}: OK" in result.stderr


def test_version() -> None:
    result = ecs_imds("--version")
    assert result.returncode == 0 and result.stdout.startswith("ecs-imds, version ")


def test_json_log_format_and_level(tmp_path: Path) -> None:
    """`--log-format json` makes every log line a JSON object; `--log-level error` silences
    the start-up messages."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    args = ["serve", "--demo", "--api", f"127.0.0.1:{taken.getsockname()[1]}",  # taken
            "--listen", "127.0.0.1:0=vpc-x"]
    quiet = ecs_imds("--log-level", "error", "--data-dir", str(tmp_path / "q"), *args)
    assert "INFO" not in quiet.stderr and "Error: --api" in quiet.stderr
    loud = ecs_imds("--log-format", "json", "--data-dir", str(tmp_path / "l"), *args)
    records = [json.loads(line) for line in loud.stderr.splitlines()
               if line.startswith("{")]
    assert any(r["level"] == "info" and r["logger"].startswith("ecs_imds") for r in records)
    assert loud.stderr.strip().splitlines()[-1].startswith("Error: --api: 127.0.0.1:")
