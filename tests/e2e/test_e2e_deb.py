"""The Debian package (scripts/make-release's build-hive_VERSION_all.deb) in booted systemd hosts,
installed with apt as an Ubuntu operator would: a node joins the hive with it, install.sh and the
package refuse to be installed over each other (and a node moves from one to the other keeping
its identity), an upgrade to a newer build keeps the identity, the secret and the admin's config,
remove keeps the config and the identity, purge removes everything, and a package installed on
a clean host generates the secret of a new hive.

The tests of this module share two hosts and run in order: build1 founds the hive with install.sh,
build2 joins it with the package.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

import e2e_harness as hx
from conftest import measure
from test_e2e_hive import SECRET_RE, SEED_WAY, identity, install, jq, lines_in_order

CODE_DIR = "/usr/lib/build-hive"
UNITS = ("build-agent.service", "build-advisor.service")
ADMIN_EDIT = "\n# edited by the admin: kept across upgrades\nlog_level = \"info\"\n"


def apt(host: hx.Container, *args: str, check: bool = True):
    return host.run("env", "DEBIAN_FRONTEND=noninteractive", "apt", "-y", "-q", *args,
                    check=check, timeout=180)


def invocation(host: hx.Container, unit: str) -> str:
    return host.run("systemctl", "show", "-p", "InvocationID", "--value", unit).stdout.strip()


def invocation_log(host: hx.Container, invocation_id: str) -> str:
    return host.run("journalctl", "--no-pager", "-q", "-o", "cat",
                    f"_SYSTEMD_INVOCATION_ID={invocation_id}").stdout


def not_installed(host: hx.Container) -> bool:
    """dpkg has no file of build-hive (it may remember that it was asked to install it)."""
    status = host.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "build-hive", check=False)
    return status.stdout[1:2] in ("", "n")


def completes(host: hx.Container, *words: str) -> list[str]:
    """What the installed bash completion offers for `hive WORDS...` (the last one is being typed)."""
    script = ("source /usr/share/bash-completion/completions/hive\n"
              'COMP_WORDS=(hive "$@"); COMP_CWORD=$#\n_hive\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    return host.run("bash", "-c", script, "complete", *words).stdout.split()


@pytest.fixture(scope="module")
def deb_hive(lab, release, next_release):
    """build1 founds the hive with install.sh; both hosts have both builds of the package in /tmp."""
    build1, build2 = lab.hosts(("build1", 11), ("build2", 12))
    out, _ = install(build1)
    secret = SECRET_RE.search(out).group(1)
    debs = {"deb": release["deb"], "next": next_release["deb"]}
    www = release["deb"].parent
    for host in (build1, build2):
        for path in debs.values():
            url = f"{lab.server.url}/{path.relative_to(www).as_posix()}"
            host.run("curl", "-fsS", "-o", f"/tmp/{path.name}", url)
    return {"build1": build1, "build2": build2, "secret": secret,
            "deb": f"/tmp/{debs['deb'].name}", "next": f"/tmp/{debs['next'].name}",
            "version": debs["deb"].name.split("_")[1], "next_version": debs["next"].name.split("_")[1]}


def test_a_node_joins_the_hive_with_the_package(deb_hive, lab, diagnose):
    host, secret = deb_hive["build2"], deb_hive["secret"]
    host.bash(SEED_WAY.format(secret=secret))
    started = time.monotonic()
    out = apt(host, "install", deb_hive["deb"]).stdout
    assert "build-hive: build-agent and build-advisor started" in out, out
    assert "generated a new hive secret" not in out and secret not in out
    hx.wait_for(lambda: host.path("/var/lib/build/identity.json").exists(), 30,
                "build2's identity.json")
    measure(lab.release, "apt install of the .deb to identity (s)", round(time.monotonic() - started, 2))
    data = identity(host)
    assert (data["role"], data["assigned_by"]) == ("controller", ["build1"])
    lines_in_order(host.journal("build-agent"), [
        "Discovered 1 peer(s)", " <- build1: become 'controller' (first node becomes controller)",
        "Consensus: I am a 'controller'"])
    assert host.read("/etc/build/shared_secret").strip() == secret, "the secret is never replaced"
    assert host.path("/etc/build/shared_secret").stat().st_mode & 0o777 == 0o600

    # Where the package put things, and that they are the package's.
    assert host.read(f"{CODE_DIR}/VERSION").strip() == deb_hive["version"]
    assert not host.path("/opt/build-agent").exists()
    for unit in UNITS:
        assert not host.path(f"/etc/systemd/system/{unit}").exists()
        text = host.read(f"/lib/systemd/system/{unit}")
        assert f"PYTHONPATH={CODE_DIR} " in text and "/opt/build-agent" not in text
    assert host.run("systemctl", "is-enabled", *UNITS).stdout.split() == ["enabled", "enabled"]
    assert host.run("systemctl", "is-active", *UNITS).stdout.split() == ["active", "active"]
    verify = host.run("systemd-analyze", "verify", *(f"/lib/systemd/system/{u}" for u in UNITS),
                      check=False)
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", ""), verify.stderr
    owner = host.run("dpkg-query", "-S", "/usr/bin/hive", f"/lib/systemd/system/{UNITS[0]}",
                     "/usr/share/man/man1/hive.1.gz",
                     "/usr/share/bash-completion/completions/hive", "/usr/bin/hive-inventory",
                     f"{CODE_DIR}/docs/operations.md").stdout
    assert owner.count("build-hive: ") == 6, owner
    conffiles = host.run("dpkg-query", "-W", "-f=${Conffiles}", "build-hive").stdout.split()
    assert conffiles[0] == "/etc/build/hive.toml"
    assert (hx.REPO / "packaging/hive.toml").read_text() == host.read("/etc/build/hive.toml")
    # The hive command, its man page and its completion work.
    assert json.loads(host.run("hive", "status", "--json").stdout)["role"] == "controller"
    assert host.run("zcat", "/usr/share/man/man1/hive.1.gz").stdout.startswith(".\\\" Man page of hive")
    assert completes(host, "st") == ["status"]
    # The Ansible inventory script (ansible -i /usr/bin/hive-inventory runs it).
    assert host.path("/usr/bin/hive-inventory").stat().st_mode & 0o111 == 0o111
    alias = host.path("/usr/share/man/man1/hive-inventory.1.gz")   # man hive-inventory
    assert os.readlink(alias) == "hive.1.gz" and alias.resolve().exists()
    hx.wait_for(lambda: "build1" in host.read("/var/lib/build/peers.json"), 30,
                "build2's peers.json to list build1")
    listed = json.loads(host.run("/usr/bin/hive-inventory", "--list").stdout)
    assert listed["controller"]["hosts"] == ["build2"] and listed["founder"]["hosts"] == ["build1"]
    assert listed["_meta"]["hostvars"]["build1"]["ansible_host"] == \
        json.loads(host.read("/var/lib/build/peers.json"))["peers"][0]["ip"]
    assert "--no-restart" in completes(host, "reset", "--")
    assert list(host.path(CODE_DIR).glob("build_agent/__pycache__/*.pyc")), "postinst compiles"


def test_install_sh_refuses_while_the_package_is_installed(deb_hive, diagnose):
    host = deb_hive["build2"]
    agent = invocation(host, "build-agent")
    for args in ((), ("--uninstall",), ("--uninstall", "--purge")):
        result = host.run("bash", "/src/install.sh", *args, check=False)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            "install.sh: Build Hive is installed here as the Debian package build-hive: upgrade "
            "it with 'apt install ./build-hive_VERSION_all.deb'; to use install.sh instead, "
            "'apt purge build-hive' first (it deletes /etc/build and /var/lib/build: keep a copy "
            "of the secret)"], result.stderr
    assert not host.path("/opt/build-agent").exists()
    assert invocation(host, "build-agent") == agent
    assert host.path("/var/lib/build/identity.json").exists()


def test_upgrade_to_a_newer_build_keeps_identity_secret_and_config(deb_hive, lab, diagnose):
    host = deb_hive["build2"]
    before = identity(host)
    secret = host.read("/etc/build/shared_secret")
    node_id = host.read("/var/lib/build/node_id")
    host.write("/etc/build/hive.toml", host.read("/etc/build/hive.toml") + ADMIN_EDIT)
    old = {unit: invocation(host, unit) for unit in UNITS}
    started = time.monotonic()
    out = apt(host, "install", deb_hive["next"]).stdout
    measure(lab.release, "apt upgrade of the .deb (s)", round(time.monotonic() - started, 2))
    assert "build-hive: build-agent and build-advisor restarted" in out, out
    assert host.read(f"{CODE_DIR}/VERSION").strip() == deb_hive["next_version"]
    assert host.run("dpkg-query", "-W", "-f=${Version}", "build-hive").stdout \
        == deb_hive["next_version"]
    new = {unit: invocation(host, unit) for unit in UNITS}
    assert all(new[unit] != old[unit] for unit in UNITS), "both services restarted"
    hx.wait_for(lambda: "Already identified as: controller"
                in invocation_log(host, new["build-agent.service"]), 15,
                "the upgraded agent to find its identity")
    after = identity(host)
    assert (after["role"], after["assigned_at"]) == (before["role"], before["assigned_at"])
    assert host.read("/etc/build/shared_secret") == secret
    assert host.read("/var/lib/build/node_id") == node_id
    assert host.read("/etc/build/hive.toml").endswith(ADMIN_EDIT), "the admin's config is kept"
    assert host.run("systemctl", "is-enabled", *UNITS).stdout.split() == ["enabled", "enabled"]
    assert host.run("systemctl", "is-active", *UNITS).stdout.split() == ["active", "active"]


def test_an_install_sh_node_moves_to_the_package(deb_hive, diagnose):
    """The package refuses to go over install.sh's installation (one line, nothing changed); after
    `install.sh --uninstall` it installs and the node keeps its identity."""
    host = deb_hive["build1"]
    before = identity(host)
    agent = invocation(host, "build-agent")
    result = apt(host, "install", deb_hive["deb"], check=False)
    assert result.returncode != 0
    # (apt runs dpkg on a terminal of its own: the preinst's stderr comes out on apt's stdout)
    refusals = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                if line.strip().startswith("build-hive: ")]
    assert refusals == [
        "build-hive: Build Hive is installed here by install.sh (/opt/build-agent, "
        "/etc/systemd/system/build-agent.service): run 'sudo bash install.sh --uninstall' first "
        "(it keeps the identity and the secret), then install the package"], result.stdout
    assert not_installed(host)
    assert not host.path(CODE_DIR).exists()
    assert invocation(host, "build-agent") == agent, "install.sh's services were left alone"

    host.run("bash", "/src/install.sh", "--uninstall")
    apt(host, "install", deb_hive["deb"])
    agent = invocation(host, "build-agent.service")
    hx.wait_for(lambda: "Already identified as: founder" in invocation_log(host, agent), 15,
                "build1's agent, from the package, to find its identity")
    assert identity(host)["assigned_at"] == before["assigned_at"]
    member = deb_hive["build2"]
    hx.wait_for(lambda: "build1" in jq(member, ".peers[].hostname", "/var/lib/build/peers.json"),
                30, "build2 to list build1")


def test_remove_keeps_config_and_identity_and_purge_removes_everything(deb_hive, diagnose):
    host = deb_hive["build2"]
    apt(host, "remove", "build-hive")
    assert host.run("systemctl", "is-active", *UNITS, check=False).stdout.split() \
        == ["inactive", "inactive"]
    for path in (CODE_DIR, "/usr/bin/hive", "/usr/bin/hive-inventory", "/usr/share/man/man1/hive.1.gz",
                 "/usr/share/man/man1/hive-inventory.1.gz",
                 "/usr/share/bash-completion/completions/hive",
                 *(f"/lib/systemd/system/{unit}" for unit in UNITS)):
        assert not host.path(path).exists() and not host.path(path).is_symlink(), path
    for path in ("/etc/build/hive.toml", "/etc/build/shared_secret", "/var/lib/build/identity.json"):
        assert host.path(path).exists(), path
    assert host.run("dpkg-query", "-W", "-f=${Status}", "build-hive").stdout \
        == "deinstall ok config-files"

    apt(host, "purge", "build-hive")
    for path in ("/etc/build", "/var/lib/build"):
        assert not host.path(path).exists(), path
    leftovers = host.run("find", "/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled",
                         "/var/lib/systemd/deb-systemd-helper-masked", "-name", "build-a*",
                         check=False).stdout
    assert leftovers == "", leftovers
    assert not_installed(host)
    listed = host.run("systemctl", "list-unit-files", "--no-legend", "build-a*", check=False)
    assert listed.stdout.strip() == "", listed.stdout  # (and exit 1: no such unit file)


def test_on_a_clean_host_the_package_generates_a_new_hives_secret(deb_hive, diagnose):
    """build2, purged: the package generates a secret (printing where, not what) and the node
    founds a hive of its own; a second configure never replaces the secret."""
    host = deb_hive["build2"]
    out = apt(host, "install", deb_hive["deb"]).stdout
    secret = host.read("/etc/build/shared_secret").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret) and secret != deb_hive["secret"]
    stat = host.path("/etc/build/shared_secret").stat()
    assert (stat.st_mode & 0o777, stat.st_uid, stat.st_gid) == (0o600, 0, 0)
    lines_in_order(out, [
        "build-hive: generated a new hive secret in /etc/build/shared_secret: this node founds a hive.",
        "  Copy it ('sudo cat /etc/build/shared_secret') to /etc/build/shared_secret (mode 0600) on "
        "every other node BEFORE installing there."])
    assert secret not in out
    hx.wait_for(lambda: host.path("/var/lib/build/identity.json").exists(), 30,
                "build2's identity.json")
    assert identity(host)["role"] == "founder"
    apt(host, "install", "--reinstall", deb_hive["deb"])
    assert host.read("/etc/build/shared_secret").strip() == secret
    assert secret not in host.run("journalctl", "--no-pager", "-q", "-o", "cat").stdout
