"""cloud-init, the users' main path: a host with Debian's cloud-init and a NoCloud seed holding the
shipped scripts/cloud-init.yaml (the hive's secret in write_files, runcmd fetching the release
tarball from the lab's web server and running install.sh) boots and joins the hive alone."""

from __future__ import annotations

import json
import time

import pytest

import e2e_harness as hx
from conftest import measure
from test_e2e_hive import SECRET_RE, identity, install, lines_in_order

SECRET_PLACEHOLDER = "CHANGE-ME-the-hive-shared-secret"
URL_PLACEHOLDER = "CHANGE-ME-https://example.internal/build-hive-0.1.0.tar.gz"


def user_data(secret: str, url: str) -> str:
    """The shipped cloud-config with only its two CHANGE-ME values filled in."""
    text = (hx.REPO / "scripts/cloud-init.yaml").read_text()
    assert text.count(SECRET_PLACEHOLDER) == 1 and text.count(URL_PLACEHOLDER) == 1
    return text.replace(SECRET_PLACEHOLDER, secret).replace(URL_PLACEHOLDER, url)


@pytest.fixture(scope="module")
def founder(lab):
    (host,) = lab.hosts(("build1", 11))
    out, _ = install(host)
    return host, SECRET_RE.search(out).group(1)


def test_cloud_init_node_joins_with_no_human_step(founder, lab, release_tarball, diagnose):
    host1, secret = founder
    (node,) = lab.hosts(("build5", 15), boot=False)
    url = f"{lab.server.url}/{release_tarball.name}"
    node.write("/var/lib/cloud/seed/nocloud/user-data", user_data(secret, url), mode=0o600)
    node.write("/var/lib/cloud/seed/nocloud/meta-data",
               "instance-id: build5-e2e\nlocal-hostname: build5\n")
    # The minbase image has no 'locales' package, so cloud-init's locale module (update-locale)
    # would fail; a real cloud image has it.  Nothing else of cloud-init's defaults is changed.
    node.write("/etc/cloud/cloud.cfg.d/91-build-hive-e2e-locale.cfg", "locale: false\n")
    node.path("/etc/cloud/cloud-init.disabled").unlink()  # on for this host only (overlay)
    started = time.monotonic()
    node.boot()
    node.wait_booted(timeout=240)  # "running" only after cloud-final (runcmd) has finished
    hx.wait_for(lambda: node.path("/var/lib/build/identity.json").exists(), 60,
                "build5's identity.json")
    measure(lab.release, "cloud-init boot to identity (s)", round(time.monotonic() - started, 1))

    status = node.run("cloud-init", "status", "--long", check=False).stdout
    assert "status: done" in status, status
    output = node.read("/var/log/cloud-init-output.log")
    lines_in_order(output, ["Discovered 1 peer(s)", "Asking peers for role assignment...",
                            " <- build1: become 'controller' (first node becomes controller)",
                            "Consensus: I am a 'controller'", "Install complete."])
    assert "Generated new shared secret" not in output and secret not in output
    secret_file = node.path("/etc/build/shared_secret")
    assert secret_file.read_text().strip() == secret
    assert secret_file.stat().st_mode & 0o777 == 0o600
    data = identity(node)
    assert data["role"] == "controller" and data["assigned_by"] == ["build1"]
    assert node.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
        == ["active", "active"]
    assert node.run("systemctl", "is-enabled", "cloud-final.service", check=False).returncode == 0
    hx.wait_for(lambda: "build5" in json.dumps(json.loads(
        host1.read("/var/lib/build/peers.json"))["peers"]), 30, "build1 to list build5")
