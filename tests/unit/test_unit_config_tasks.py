"""hive.toml's [tasks] table and control_socket: defaults, every key's checks, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_agent.config import Config, ConfigError, TasksConfig, load_config


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hive.toml"
    path.write_text(text)
    return str(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(toml(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message  # one clear line
    return message


def test_tasks_are_off_by_default_and_the_socket_follows_the_state_dir(tmp_path):
    config = load_config(toml(tmp_path, 'state_dir = "/run/lab/h3/state"\n'))
    assert config.tasks == TasksConfig() and config.tasks.enabled is False
    assert str(config.control_path) == "/run/lab/h3/state/control.sock"
    assert str(Config().control_path) == "/var/lib/build/control.sock"
    assert str(load_config(toml(tmp_path, 'control_socket = "/run/build/agent.sock"\n'))
               .control_path) == "/run/build/agent.sock"


def test_a_full_tasks_table(tmp_path):
    config = load_config(toml(tmp_path, """
port = 50555
[tasks]
enabled = true
roles = ["builder", "runner"]
slots = 3
timeout = 600
retries = 2
memory_max_mb = 2048
work_dir = "/srv/tasks"
"""))
    assert config.port == 50555
    assert config.tasks == TasksConfig(enabled=True, roles=("builder", "runner"), slots=3,
                                       timeout=600.0, retries=2, memory_max_mb=2048,
                                       work_dir="/srv/tasks")


@pytest.mark.parametrize("text, expected", [
    ("[tasks]\nenable = true\n", "unknown key(s) in [tasks]: enable (known: enabled, roles"),
    ("[tasks]\nenabled = 1\n", "config key 'tasks.enabled' must be true or false, got 1"),
    ("[tasks]\nroles = \"builder\"\n", "must be a list of role names"),
    ("[tasks]\nroles = [\"Builder\"]\n", "must be a list of role names"),
    ("[tasks]\nslots = 0\n", "'tasks.slots' must be an integer from 1 to 1024"),
    ("[tasks]\nslots = 2.5\n", "'tasks.slots' must be an integer from 1 to 1024"),
    ("[tasks]\nretries = -1\n", "'tasks.retries' must be an integer from 0 to 10"),
    ("[tasks]\ntimeout = 0\n", "'tasks.timeout' must be a number of seconds from 1 to"),
    ("[tasks]\ntimeout = true\n", "'tasks.timeout' must be a number of seconds"),
    ("[tasks]\nmemory_max_mb = 1\n", "'tasks.memory_max_mb' must be an integer"),
    ("[tasks]\nwork_dir = \"tasks\"\n", "'tasks.work_dir' must be an absolute path"),
    ("[tasks]\nwork_dir = \"/\"\n", "'tasks.work_dir' must be an absolute path"),
    ("tasks = true\n", "config key 'tasks' must be a table"),
    ("[tasks.more]\nx = 1\n", "unknown key(s) in [tasks]: more"),
    ("[colours]\nred = 1\n", "unknown key(s) in"),
    ("control_socket = \"agent.sock\"\n", "config key 'control_socket' must be an absolute path"),
    ("control_socket = \"/" + "x" * 120 + "\"\n", "config key 'control_socket' must be an"),
])
def test_bad_tasks_config_is_one_clear_line(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)
