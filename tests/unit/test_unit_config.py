"""hive.toml and the shared secret: defaults, every key's checks, and the secret file's rules."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from build_agent import config as config_mod
from build_agent.config import Config, ConfigError, load_config, load_secrets, secret_path

GOOD_SECRET = "0123456789abcdef0123"


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


# --- hive.toml --------------------------------------------------------------------------------

def test_defaults():
    config = Config()
    assert config.port == 50555
    assert config.interface == ""
    assert config.secret_file == "/etc/build/shared_secret"
    assert config.state_dir == "/var/lib/build"
    assert config.heartbeat_interval == 10.0
    assert config.install_packages is True
    assert config.policy == ""
    assert config.role_hooks_dir == "/etc/build/role.d"
    assert config.identity_path == Path("/var/lib/build/identity.json")
    assert config.peers_path == Path("/var/lib/build/peers.json")
    assert config.node_id_path == Path("/var/lib/build/node_id")


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    assert load_config(None) == Config()


def test_default_file_is_read_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG", toml(tmp_path, "port = 6000\n"))
    assert load_config(None).port == 6000


def test_empty_file_means_defaults(tmp_path):
    assert load_config(toml(tmp_path, "")) == Config()
    assert load_config(toml(tmp_path, "# only a comment\n")) == Config()


def test_every_key(tmp_path):
    config = load_config(toml(tmp_path, """
port = 50600
interface = "veth-h1"
secret_file = "/etc/hive/secret"
state_dir = "/srv/build"
heartbeat_interval = 2
install_packages = false
policy = "/etc/build/policy.py"
log_level = "debug"
"""))
    assert config == Config(port=50600, interface="veth-h1", secret_file="/etc/hive/secret",
                            state_dir="/srv/build", heartbeat_interval=2.0,
                            install_packages=False, policy="/etc/build/policy.py",
                            log_level="debug")
    assert isinstance(config.heartbeat_interval, float)
    assert config.identity_path == Path("/srv/build/identity.json")


@pytest.mark.parametrize("key, value", [
    ("port", "1"), ("port", "65535"), ("heartbeat_interval", "0.2"),
    ("heartbeat_interval", "3600"), ("heartbeat_interval", "0.5"), ("install_packages", "true"),
    ("log_level", '"warning"'), ("log_level", '"error"'), ("log_level", '"info"'),
    ("interface", '""'), ("interface", '"enp0s31f6"'), ("interface", '"a23456789012345"'),
    ("policy", '""'), ("policy", '"relative/policy.py"'),
    ("role_hooks_dir", '"/run/hive-lab/lab/h1/role.d"'),
])
def test_good_values(tmp_path, key, value):
    load_config(toml(tmp_path, f"{key} = {value}\n"))


@pytest.mark.parametrize("key, value", [
    ("port", "0"), ("port", "65536"), ("port", "-1"), ("port", '"50555"'), ("port", "true"),
    ("port", "50555.0"), ("port", "[50555]"),
    ("heartbeat_interval", "0.1"), ("heartbeat_interval", "0"), ("heartbeat_interval", "3601"),
    ("heartbeat_interval", '"10"'), ("heartbeat_interval", "true"), ("heartbeat_interval", "nan"),
    ("heartbeat_interval", "inf"), ("heartbeat_interval", "-10"),
    ("install_packages", '"yes"'), ("install_packages", "1"), ("install_packages", '"false"'),
    ("log_level", '"verbose"'), ("log_level", '"INFO"'), ("log_level", "5"),
    ("log_level", '["info"]'),
    ("interface", '"a234567890123456"'), ("interface", '"eth/0"'), ("interface", '" eth0"'),
    ("interface", "5"), ("interface", "false"),
    ("secret_file", '"shared_secret"'), ("secret_file", '""'), ("secret_file", "5"),
    ("state_dir", '"var/lib/build"'), ("state_dir", "[]"),
    ("policy", "5"), ("policy", "true"), ("policy", "{ path = 'x' }"),
    ("role_hooks_dir", '"role.d"'), ("role_hooks_dir", '""'), ("role_hooks_dir", "false"),
])
def test_bad_values(tmp_path, key, value):
    message = error_of(tmp_path, f"{key} = {value}\n")
    assert f"config key '{key}' must be" in message
    assert "got" in message


def test_unknown_keys_are_listed(tmp_path):
    message = error_of(tmp_path, 'prot = 1\nsecret = "x"\nport = 50555\n')
    assert "unknown key(s)" in message
    assert "prot, secret" in message  # sorted, all of them
    assert "known:" in message and "heartbeat_interval" in message


def test_a_table_is_an_unknown_key(tmp_path):
    assert "unknown key(s)" in error_of(tmp_path, "[agent]\nport = 1\n")


@pytest.mark.parametrize("text", ["port = ", "port = 1\nport = 2\n", "[x\n", "port == 1",
                                  "interface = 'unterminated\n"])
def test_invalid_toml(tmp_path, text):
    message = error_of(tmp_path, text)
    assert "is not valid TOML" in message and "hive.toml" in message


def test_missing_explicit_file_is_an_error(tmp_path):
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml not found"):
        load_config(path)


# --- the shared secret -----------------------------------------------------------------------------

def secret_file(tmp_path: Path, text: str | bytes, mode: int = 0o600, name: str = "secret") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)
    return str(path)


def test_one_secret(tmp_path):
    assert load_secrets(secret_file(tmp_path, GOOD_SECRET + "\n")) == [GOOD_SECRET.encode()]


def test_no_trailing_newline_and_surrounding_space(tmp_path):
    assert load_secrets(secret_file(tmp_path, "  " + GOOD_SECRET + "  \r\n")) == \
        [GOOD_SECRET.encode()]


def test_several_secrets_first_signs(tmp_path):
    text = "new-secret-0123456789\n\nold-secret-0123456789\n"
    assert load_secrets(secret_file(tmp_path, text)) == [b"new-secret-0123456789",
                                                         b"old-secret-0123456789"]


def test_a_line_starting_with_a_hash_is_a_secret_not_a_comment(tmp_path):
    """A secret such as '#MyHive...' must not vanish: every non-blank line is a secret (the
    installer counts them the same way), so nodes never disagree on which one signs."""
    text = "#hash-first-secret-0123\n  #indented-secret-0123456  \n"
    assert load_secrets(secret_file(tmp_path, text)) == [b"#hash-first-secret-0123",
                                                         b"#indented-secret-0123456"]
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        load_secrets(secret_file(tmp_path, "# old one below\n"))


def test_missing_secret_file(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no shared secret at .*nope"):
        load_secrets(path)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o602, 0o666, 0o640, 0o620, 0o610])
def test_secret_open_to_group_or_others_is_refused(tmp_path, mode):
    """The same rule as install.sh (mode & 077): a group-readable secret is refused too."""
    path = secret_file(tmp_path, GOOD_SECRET, mode=mode)
    with pytest.raises(ConfigError) as info:
        load_secrets(path)
    assert f"has mode {mode:04o} (group or others may read it)" in str(info.value)
    assert f"chmod 0600 {path}" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_accepted(tmp_path, mode):
    assert load_secrets(secret_file(tmp_path, GOOD_SECRET, mode=mode)) == [GOOD_SECRET.encode()]


@pytest.mark.parametrize("text", ["short", "x" * 15, GOOD_SECRET + "\nshort-one\n"])
def test_too_short_secret_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        load_secrets(secret_file(tmp_path, text))


def test_sixteen_characters_is_enough(tmp_path):
    assert load_secrets(secret_file(tmp_path, "x" * 16)) == [b"x" * 16]


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_secret_is_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="is empty"):
        load_secrets(secret_file(tmp_path, text))


def test_non_utf8_secret_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_secrets(secret_file(tmp_path, b"\xff\xfe" + b"x" * 20))


def test_secret_path_is_the_configured_file_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    config = Config(secret_file=str(tmp_path / "configured"))
    assert secret_path(config) == str(tmp_path / "configured")


def test_the_advisors_secret_copy_overrides_the_configured_file(tmp_path, monkeypatch):
    """build-advisor's unit names its copy of the secret in $HIVE_SECRET_COPY."""
    copy = secret_file(tmp_path, "copied-secret-0123456", name="copy")
    secret_file(tmp_path, "configured-secret-0123", name="configured")
    monkeypatch.setenv("HIVE_SECRET_COPY", str(copy))
    config = Config(secret_file=str(tmp_path / "configured"))
    assert secret_path(config) == str(copy)
    assert load_secrets(secret_path(config)) == [b"copied-secret-0123456"]


def test_the_credentials_directory_is_no_longer_read(tmp_path, monkeypatch):
    """LoadCredential= copies were filled at start only (a rotation never reached them)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds, "credential-secret-0123", name="shared_secret")
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = Config(secret_file=str(tmp_path / "configured"))
    assert secret_path(config) == str(tmp_path / "configured")


def test_nan_is_never_accepted_for_the_interval():
    with pytest.raises(ConfigError):
        config_mod._check("heartbeat_interval", math.nan)
