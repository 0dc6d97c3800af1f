"""Rotating the hive's secret in booted systemd hosts, the ways users do it, proven by the effect.

One lab per Debian release: build1..build3 installed the seed's way; the tests share them (and
the newcomers that join) and run in order.  After each rotation a newcomer holding ONLY the
newest secret joins: it is advised by a member only if that member's build-advisor (a throw-away
user that never reads /etc/build/shared_secret itself) really took the new secret.  So the
check is its identity.json: `assigned_by` must list every member.

- the zero-downtime rotation of docs/security.md (add as a second line, reload; swap, reload;
  drop the old one, reload), with `systemctl reload build-agent build-advisor` on every member;
- a reload with an unchanged file says so, one with an unusable file fails visibly and keeps
  the advisor's secret, a start with an unusable file fails in one line;
- the seed's recipe: the new secret copied to every member, `systemctl restart build-agent` only;
- `systemctl reload build-agent` alone, then `hive reset` on a member holding only the newest
  secret;
- stopping and starting build-agent stops and starts build-advisor with it.
"""

from __future__ import annotations

import secrets
import time

import pytest

import e2e_harness as hx
from conftest import measure
from test_e2e_hive import SECRET_RE, SEED_WAY, identity, install, lines_in_order

SECRET = "/etc/build/shared_secret"
COPY = "/run/build-advisor/shared_secret"
RELOADED = "Reloaded the shared secret"
UNCHANGED = "Secret file unchanged"


@pytest.fixture(scope="module")
def rot(lab):
    """build1..build3, installed one after another the seed's way (build1 generates the secret)."""
    nodes = lab.hosts(("build1", 31), ("build2", 32), ("build3", 33))
    try:
        out, _ = install(nodes[0])
        match = SECRET_RE.search(out)
        assert match, f"no generated secret in build1's transcript:\n{out}"
        secret = match.group(1)
        for host in nodes[1:]:
            host.bash(SEED_WAY.format(secret=secret))
            install(host)
    except Exception:
        print(lab.diagnostics())
        raise
    return {"members": list(nodes), "secret": secret, "octet": 34}


def advisor_log(host: hx.Container) -> list[str]:
    return host.journal("build-advisor").splitlines()


def copy_of(host: hx.Container) -> str | None:
    """The advisor's copy of the secret (in the container's /run, a tmpfs), None if absent."""
    result = host.run("cat", COPY, check=False)
    return result.stdout if result.returncode == 0 else None


def show(host: hx.Container, prop: str, unit: str) -> str:
    return host.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()


def wait_advisors_active(members) -> None:
    for host in members:
        hx.wait_for(lambda: host.run("systemctl", "is-active", "build-advisor",
                                     check=False).stdout.strip() == "active", 30,
                    f"build-advisor on {host.name} to be active")


def join_newcomer(rot, lab, name: str, secret: str) -> tuple[hx.Container, str]:
    """A fresh host holding only SECRET (the seed's way) runs install.sh; the hive advises it."""
    host = lab.hosts((name, rot["octet"]))[0]
    rot["octet"] += 1
    host.bash(SEED_WAY.format(secret=secret))
    out, seconds = install(host, "--timeout", "30")
    measure(lab.release, f"rotation: install.sh of {name} after the rotation (s)", round(seconds, 2))
    return host, out


def assert_advised_by_every_member(host: hx.Container, members, transcript: str) -> None:
    names = sorted(m.name for m in members)
    assert host.path("/var/lib/build/identity.json").exists(), (
        f"{host.name} got no identity (no member advised it):\n{transcript}")
    got = identity(host)
    assert sorted(got["assigned_by"]) == names, (
        f"{host.name} was advised by {got['assigned_by']}, not by every member {names}:\n"
        f"{transcript}")
    assert sum(got["votes"].values()) == len(names), got
    for name in names:
        assert any(line.startswith(f" <- {name}: become ") for line in transcript.splitlines()), \
            transcript


def test_readme_zero_downtime_rotation_reaches_every_advisor(rot, lab, diagnose):
    members, old, new = rot["members"], rot["secret"], secrets.token_hex(32)
    steps = [  # (docs/security.md's step, a script doing it, secrets in use afterwards)
        ("add the new secret as a second line", f"echo '{new}' >> {SECRET}\n", 2),
        ("swap the lines", f"printf '%s\\n%s\\n' '{new}' '{old}' > {SECRET}\n", 2),
        ("drop the old one", f"echo '{new}' > {SECRET}\n", 1),
    ]
    said = {}  # (step, host) -> the advisor's new log lines after that reload
    for step, script, _count in steps:
        for host in members:
            before = len(advisor_log(host))
            host.bash(script)
            host.run("systemctl", "reload", "build-agent", "build-advisor")
            said[step, host.name] = hx.wait_for(
                lambda: [line for line in advisor_log(host)[before:]
                         if RELOADED in line or UNCHANGED in line or "Reload failed" in line],
                10, f"build-advisor on {host.name} to reload after '{step}'")
    rot["secret"] = new
    # The effect: a newcomer that knows only the new secret is advised by every member.
    newcomer, out = join_newcomer(rot, lab, "build4", new)
    assert_advised_by_every_member(newcomer, members, out)
    rot["members"].append(newcomer)
    # ... and each reload said what changed.  (`reload build-agent build-advisor` may reload the
    # advisor twice, once propagated from the agent: the second finds nothing new and says so.)
    for step, _script, count in steps:
        for host in members[:3]:
            first, *more = said[step, host.name]
            assert first == f"{RELOADED} ({count} secret(s))", (step, host.name, first)
            assert set(more) <= {f"{UNCHANGED}: still using {count} secret(s)"}, (step, more)
    for host in members[:3]:
        assert copy_of(host) == f"{new}\n", host.name
        # the copy: for the advisor's dynamic user only, in its own runtime directory
        uid = host.run("ps", "-o", "uid=", "-p", show(host, "MainPID", "build-advisor")
                       ).stdout.strip()
        assert 61184 <= int(uid) <= 65519, f"not a dynamic user: {uid}"
        assert host.run("stat", "-c", "%a %u", "/run/build-advisor", COPY).stdout.split() \
            == ["700", uid, "400", uid]


def test_reload_with_an_unchanged_file_does_not_claim_a_change(rot, diagnose):
    """`systemctl reload build-agent` alone reaches the advisor (ReloadPropagatedFrom=), which
    says the secret file is unchanged; its copy stays the same file content."""
    host = rot["members"][0]
    copy = copy_of(host)
    pid = show(host, "MainPID", "build-advisor")
    before = len(advisor_log(host))
    host.run("systemctl", "reload", "build-agent")
    lines = hx.wait_for(lambda: [line for line in advisor_log(host)[before:]
                                 if RELOADED in line or UNCHANGED in line], 10,
                        "build-advisor to reload with build-agent")
    assert lines == [f"{UNCHANGED}: still using 1 secret(s)"]
    assert copy_of(host) == copy and show(host, "MainPID", "build-advisor") == pid


def test_an_unusable_secret_file_fails_visibly_and_the_advisor_keeps_its_secret(rot, diagnose):
    host = rot["members"][1]
    good = host.read(SECRET)
    copy = copy_of(host)
    pid = show(host, "MainPID", "build-advisor")
    try:
        # A new secret added, but the file left readable by everyone: the reload fails.
        host.write(SECRET, good + secrets.token_hex(32) + "\n", mode=0o644)
        before = len(advisor_log(host))
        result = host.run("systemctl", "reload", "build-agent", "build-advisor", check=False)
        assert result.returncode != 0, "the reload must fail visibly"
        errors = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-p", "err",
                          "-u", "build-advisor").stdout
        line = (f"Reload failed, keeping the old secret: shared secret {SECRET} has mode 0644 "
                f"(group or others may read it): run 'chmod 0600 {SECRET}'")
        assert line in errors.splitlines(), errors
        assert copy_of(host) == copy, "the advisor's copy must stay as it was"
        assert show(host, "MainPID", "build-advisor") == pid
        assert host.run("systemctl", "is-active", "build-advisor").stdout.strip() == "active"
        assert not [l for l in advisor_log(host)[before:] if RELOADED in l or UNCHANGED in l]
        # Starting with it fails, in one line that says what to do.
        assert host.run("systemctl", "restart", "build-advisor", check=False).returncode != 0
        errors = host.run("journalctl", "--no-pager", "-q", "-o", "cat", "-p", "err",
                          "-u", "build-advisor").stdout
        assert (f"build-advisor: shared secret {SECRET} has mode 0644 (group or others may "
                f"read it): run 'chmod 0600 {SECRET}'") in errors.splitlines(), errors
        assert host.run("systemctl", "is-active", "build-advisor",
                        check=False).stdout.strip() != "active"
    finally:
        host.write(SECRET, good, mode=0o600)
        host.run("systemctl", "reset-failed", "build-advisor", check=False)
        host.run("systemctl", "restart", "build-advisor")
    assert copy_of(host) == copy
    assert host.run("systemctl", "is-active", "build-agent", "build-advisor").stdout.split() \
        == ["active", "active"]


def test_seed_recipe_restart_build_agent_reaches_every_advisor(rot, lab, diagnose):
    """The seed's rotation: the new secret copied to every node (Ansible's copy: the content,
    no newline, mode 0600), then `systemctl restart build-agent`, nothing else."""
    members, newest = list(rot["members"]), secrets.token_hex(16)
    started = {}
    for host in members:
        started[host.name] = show(host, "InvocationID", "build-advisor")
        host.bash(f"printf '%s' '{newest}' > {SECRET}.new\nchmod 0600 {SECRET}.new\n"
                  f"mv -f {SECRET}.new {SECRET}\n")
        host.run("systemctl", "restart", "build-agent")
    rot["secret"] = newest
    wait_advisors_active(members)
    newcomer, out = join_newcomer(rot, lab, "build5", newest)
    assert_advised_by_every_member(newcomer, members, out)
    rot["members"].append(newcomer)
    for host in members:  # the advisor was restarted with the agent (PartOf=)
        assert show(host, "InvocationID", "build-advisor") != started[host.name], host.name
        assert copy_of(host) == f"{newest}\n"


def test_reload_build_agent_alone_then_hive_reset(rot, diagnose):
    """The newest secret as the only line everywhere and `systemctl reload build-agent` only;
    then a member holding only that secret runs `hive reset`: every other member advises it."""
    members, newest = rot["members"], secrets.token_hex(32)
    for host in members:
        host.bash(f"echo '{newest}' > {SECRET}\n")
        host.run("systemctl", "reload", "build-agent")
    rot["secret"] = newest
    asker = members[-1]
    before = identity(asker)
    time.sleep(1.1)  # assigned_at has one-second resolution
    asker.run("hive", "reset")
    invocation = show(asker, "InvocationID", "build-agent")

    def settled():
        log = asker.run("journalctl", "--no-pager", "-q", "-o", "cat",
                        f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
        return log if "Consensus: I am a" in log else None
    log = hx.wait_for(settled, 30, f"{asker.name} to be advised again after 'hive reset'")
    lines_in_order(log, ["Asking peers for role assignment..."])
    after = identity(asker)
    assert after["assigned_at"] > before["assigned_at"]
    others = sorted(h.name for h in members if h is not asker)
    assert sorted(after["assigned_by"]) == others, (after, log)
    wait_advisors_active([asker])  # restarted with the agent: it may settle before it is up
    for host in members:
        assert copy_of(host) == f"{newest}\n", host.name


def test_stopping_and_starting_the_agent_takes_the_advisor_along(rot, diagnose):
    host = rot["members"][2]
    host.run("systemctl", "stop", "build-agent")
    assert host.run("systemctl", "is-active", "build-agent", "build-advisor",
                    check=False).stdout.split() == ["inactive", "inactive"]
    assert copy_of(host) is None, "the runtime directory (and the copy) go with it"
    host.run("systemctl", "start", "build-agent")
    wait_advisors_active([host])
    assert host.run("systemctl", "is-active", "build-agent").stdout.strip() == "active"
    assert copy_of(host) == f"{rot['secret']}\n"
