"""Role hooks: which files run (run-parts' rules, root's alone), how (env, timeout, process
group), what is logged and recorded, and when the agent runs them (after its packages, after a
move, at start only if the last run for this role did not end cleanly)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace

import pytest

from build_agent import hooks, protocol, state, timing
from build_agent.hooks import RoleHooks, Run, find_hooks, run_all, run_hook
from hive_fakes import T0
from test_unit_agent import deliver, make_agent, run_until, step  # noqa: F401 (fixture)
from test_unit_healing import EPS, MEMBERS, _runner_in_a_hive_without_controller

SCRIPT = "#!/bin/sh\nexit 0\n"
BUILDER = Run("builder", "runner", "2026-11-26T12:00:00Z", "installed")


def write_hook(directory, name, text=SCRIPT, mode=0o755):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


class FakeRunner:
    """Records every call; answers from a table by hook name (default 0)."""

    def __init__(self, answers=None):
        self.calls: list[tuple[str, dict, float]] = []
        self.answers = answers or {}

    def __call__(self, path, env, timeout):
        self.calls.append((os.path.basename(path), env, timeout))
        answer = self.answers.get(os.path.basename(path), 0)
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, tuple) else (answer, "")

    @property
    def names(self):
        return [name for name, _env, _timeout in self.calls]


# --- which files run ------------------------------------------------------------------------------

def test_run_parts_names_and_order_others_skipped_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    d = tmp_path / "role.d"
    for name in ("50-ci-agent", "10_first", "9-later", "Z-upper", "a-lower"):
        write_hook(d, name)
    write_hook(d, "20-ci.sh")                     # a dot: run-parts skips it
    write_hook(d, "README.md", mode=0o644)
    write_hook(d, ".hidden")
    write_hook(d, "30-notes", mode=0o644)         # not executable
    write_hook(d, "40 space")
    (d / "60-dir").mkdir()                        # not a regular file
    os.symlink(d / "50-ci-agent", d / "70-link")  # a symlink to a hook runs (run-parts: stat)
    os.symlink(d / "missing", d / "80-dangling")
    names, error = find_hooks(str(d))
    assert error is None
    assert names == ["10_first", "50-ci-agent", "70-link", "9-later", "Z-upper", "a-lower"]
    for skipped in ("20-ci.sh", "README.md", ".hidden", "40 space"):
        assert f"skipping {d}/{skipped} (run-parts runs only names made of letters" in caplog.text
    assert f"skipping {d}/30-notes (not executable)" in caplog.text
    assert f"skipping {d}/60-dir (not a regular file)" in caplog.text
    assert f"skipping {d}/80-dangling (No such file or directory)" in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_a_missing_folder_is_no_hooks_said_at_debug_only(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    runner = FakeRunner()
    summary = run_all(BUILDER, str(tmp_path / "nope"), "/x/identity.json", runner)
    assert summary == {**BUILDER.fields(), "results": {}}
    assert runner.calls == []
    assert f"No role hooks: {tmp_path}/nope does not exist" in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_a_folder_others_may_write_runs_nothing(tmp_path, caplog, where):
    d = tmp_path / "etc" / "role.d"
    write_hook(d, "50-ci-agent")
    (d if where == "folder" else d.parent).chmod(0o777)
    runner = FakeRunner()
    summary = run_all(BUILDER, str(d), "/x/identity.json", runner)
    assert runner.calls == []
    assert summary["results"] == {}
    assert not BUILDER.done_in(summary, [])
    if where == "folder":
        assert summary["error"] == (f"role hooks folder {d} has mode 0777 (writable by group or "
                                    f"others): run 'chmod go-w {d}' (build-agent runs role hooks "
                                    f"as root)")
    else:
        assert summary["error"].startswith(f"role hooks folder {d}: directory {d.parent} has "
                                           f"mode 0777")
    assert f"Role hooks not run (role 'builder', was 'runner'): {summary['error']}" in caplog.text


def test_a_hook_not_roots_alone_is_refused_the_others_run(tmp_path, caplog):
    d = tmp_path / "role.d"
    write_hook(d, "10-a")
    write_hook(d, "20-writable", mode=0o775)
    theirs = write_hook(d, "30-theirs")
    os.chown(theirs, 1000, 1000)
    write_hook(d, "40-d")
    runner = FakeRunner()
    summary = run_all(BUILDER, str(d), "/x/identity.json", runner)
    assert runner.names == ["10-a", "40-d"]
    assert summary["results"]["10-a"] == 0 and summary["results"]["40-d"] == 0
    assert summary["results"]["20-writable"].startswith(
        f"refused: role hook {d}/20-writable has mode 0775 (writable by group or others)")
    assert summary["results"]["30-theirs"].startswith(
        f"refused: role hook {d}/30-theirs is owned by uid 1000, not root")
    assert f"Role hook 30-theirs not run: role hook {d}/30-theirs is owned by uid 1000" \
        in caplog.text


def test_a_symlinked_hook_in_a_folder_others_may_write_is_refused(tmp_path):
    d = tmp_path / "role.d"
    elsewhere = tmp_path / "shared"
    target = write_hook(elsewhere, "ci")
    elsewhere.chmod(0o777)
    d.mkdir()
    os.symlink(target, d / "50-ci")
    runner = FakeRunner()
    summary = run_all(BUILDER, str(d), "/x/identity.json", runner)
    assert runner.calls == []
    assert f"directory {elsewhere}" in summary["results"]["50-ci"]


# --- how they run, what is logged and recorded ---------------------------------------------------

def test_every_hook_gets_the_role_env_in_order_and_statuses_are_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    d = tmp_path / "role.d"
    for name in ("50-ci-agent", "10-first", "60-fails", "70-raises", "80-slow", "90-last"):
        write_hook(d, name)
    runner = FakeRunner({"60-fails": (3, "line one\nno such unit\n"),
                         "70-raises": RuntimeError("boom"), "80-slow": hooks.TIMEOUT,
                         "50-ci-agent": (0, "enabling ci\n")})
    summary = run_all(BUILDER, str(d), "/var/lib/build/identity.json", runner, timeout=12.0)
    assert runner.names == ["10-first", "50-ci-agent", "60-fails", "70-raises", "80-slow",
                            "90-last"]
    for _name, env, timeout in runner.calls:
        assert env == {"PATH": hooks.HOOK_PATH, "HIVE_ROLE": "builder",
                       "HIVE_PREVIOUS_ROLE": "runner",
                       "HIVE_IDENTITY": "/var/lib/build/identity.json",
                       "HIVE_PACKAGES_STATE": "installed"}
        assert timeout == 12.0
    assert summary == {"role": "builder", "previous_role": "runner",
                       "role_since": "2026-11-26T12:00:00Z", "packages": "installed",
                       "results": {"10-first": 0, "50-ci-agent": 0, "60-fails": 3,
                                   "70-raises": "internal error: RuntimeError: boom",
                                   "80-slow": "timeout", "90-last": 0}}
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "Running role hooks (role 'builder', was 'runner'), packages installed: "
            "10-first, 50-ci-agent, 60-fails, 70-raises, 80-slow, 90-last") in lines
    assert ("INFO", "Role hook 50-ci-agent: enabling ci") in lines
    assert ("INFO", "Role hook 50-ci-agent exited 0 (role 'builder', was 'runner')") in lines
    assert ("WARNING", "Role hook 60-fails: no such unit") in lines
    assert ("WARNING", "Role hook 60-fails exited 3 (role 'builder', was 'runner')") in lines
    assert ("WARNING", "Role hook 80-slow timed out after 12s; killed it and its process group "
            "(role 'builder', was 'runner')") in lines
    assert ("ERROR", "Running role hook 70-raises raised RuntimeError") in lines
    assert ("INFO", "Role hook 90-last exited 0 (role 'builder', was 'runner')") in lines


def test_first_identity_has_an_empty_previous_role(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_hook(tmp_path / "role.d", "50-ci-agent")
    runner = FakeRunner()
    run = Run.for_identity({"role": "founder", "assigned_at": "2026-11-26T12:00:00Z",
                            "provisioned": True})
    run_all(run, str(tmp_path / "role.d"), "/x", runner)
    assert runner.calls[0][1]["HIVE_PREVIOUS_ROLE"] == ""
    assert "Role hook 50-ci-agent exited 0 (role 'founder', no previous role)" in caplog.text


def test_a_long_output_is_logged_by_its_last_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_hook(tmp_path / "role.d", "10-chatty")
    text = "".join(f"line {n}\n" for n in range(100))
    run_all(BUILDER, str(tmp_path / "role.d"), "/x", FakeRunner({"10-chatty": (0, text)}))
    assert "Role hook 10-chatty: (80 earlier lines not shown)" in caplog.text
    assert "Role hook 10-chatty: line 99" in caplog.text
    assert "Role hook 10-chatty: line 79\n" not in caplog.text


# --- run_hook: a real process --------------------------------------------------------------------

def test_run_hook_gives_exactly_the_env_stdin_devnull_cwd_root_and_the_output(tmp_path):
    out = tmp_path / "seen"
    hook = write_hook(tmp_path, "10-env", f"""#!/bin/sh
env | sort > {out}.env
pwd > {out}.cwd
readlink /proc/self/fd/0 > {out}.stdin
echo to stdout; echo to stderr >&2
exit 7
""")
    env = BUILDER.env("/var/lib/build/identity.json")
    result, output = run_hook(str(hook), dict(env), 10)
    assert result == 7
    assert output.splitlines() == ["to stdout", "to stderr"]
    seen = dict(line.split("=", 1) for line in (tmp_path / "seen.env").read_text().splitlines())
    seen.pop("PWD", None), seen.pop("SHLVL", None), seen.pop("_", None)  # the shell's own
    assert seen == env
    assert (tmp_path / "seen.cwd").read_text() == "/\n"
    assert (tmp_path / "seen.stdin").read_text() == "/dev/null\n"


def test_run_hook_kills_the_hook_and_its_process_group_at_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    hook = write_hook(tmp_path, "10-hangs", f"""#!/bin/sh
sleep 1000 &
echo $! > {pids}
echo started
sleep 1000
""")
    started = time.monotonic()
    result, output = run_hook(str(hook), {"PATH": hooks.HOOK_PATH}, 0.5)
    elapsed = time.monotonic() - started
    assert result == "timeout" and output == "started\n"
    assert elapsed < 5
    child = int(pids.read_text())
    for _ in range(100):  # the background sleep got SIGKILL too (reaped by init)
        try:
            os.kill(child, 0)
            if open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the hook's child {child} survived the timeout")


def test_run_hook_names_a_signal_and_what_cannot_run(tmp_path):
    killed = write_hook(tmp_path, "10-killed", "#!/bin/sh\nkill -TERM $$\n")
    assert run_hook(str(killed), {"PATH": hooks.HOOK_PATH}, 10)[0] == "killed by signal SIGTERM"
    no_shebang = write_hook(tmp_path, "20-noshebang", "echo hi\n")
    assert run_hook(str(no_shebang), {}, 10)[0] == "cannot run: Exec format error"
    bad_interpreter = write_hook(tmp_path, "30-bad", "#!/nonexistent/sh\n")
    assert run_hook(str(bad_interpreter), {}, 10)[0] == "cannot run: No such file or directory"


# --- the state machine --------------------------------------------------------------------------

IDENTITY = {"role": "builder", "previous_role": "runner", "assigned_at": "2026-11-26T10:00:00Z",
            "changed_at": "2026-11-26T12:00:00Z", "provisioned": True}


def machine(tmp_path, runner, names=("50-ci-agent",)):
    for name in names:
        write_hook(tmp_path / "role.d", name)
    return RoleHooks(str(tmp_path / "role.d"), str(tmp_path / "identity.json"), runner=runner,
                     clock=lambda: T0)


def finish(machine_, now=T0):
    machine_.join(5)
    return machine_.tick(now)


def test_nothing_runs_before_the_packages_are_settled(tmp_path):
    runner = FakeRunner()
    m = machine(tmp_path, runner)
    m.want({**IDENTITY, "provisioned": False, "provision_error": None})
    assert m.tick(T0) == (float("inf"), None) and runner.calls == []


@pytest.mark.parametrize("fields,packages", [
    ({"provisioned": True}, "installed"),
    ({"provisioned": False, "provision_error": "apt-get install failed (exit 100): E: x"},
     "failed"),
    ({"provisioned": False, "provision_error": "skipped: install_packages = false"},
     "disabled")])
def test_hooks_run_once_the_packages_are_settled(tmp_path, fields, packages):
    runner = FakeRunner()
    m = machine(tmp_path, runner)
    m.want({**IDENTITY, **fields})
    deadline, recorded = m.tick(T0)
    assert deadline == T0 + timing.ROLE_HOOK_POLL and recorded is None
    deadline, recorded = finish(m, T0 + 1)
    assert runner.calls[0][1]["HIVE_PACKAGES_STATE"] == packages
    assert recorded == {"role_hooks": {
        "role": "builder", "previous_role": "runner", "role_since": "2026-11-26T12:00:00Z",
        "packages": packages, "results": {"50-ci-agent": 0}, "ran_at": "2026-11-26T12:00:00Z"}}
    assert deadline == float("inf")
    m.want({**IDENTITY, **fields})  # asked again (every tick): nothing new
    assert m.tick(T0 + 2) == (float("inf"), None) and len(runner.calls) == 1


def test_the_tick_never_waits_for_a_running_hook(tmp_path):
    gate = threading.Event()
    runner = FakeRunner()

    def slow(path, env, timeout):
        gate.wait(10)
        return runner(path, env, timeout)
    m = machine(tmp_path, slow)
    m.want(IDENTITY)
    m.tick(T0)
    started = time.monotonic()
    for n in range(1, 6):
        assert m.tick(T0 + n) == (T0 + n + timing.ROLE_HOOK_POLL, None)
    assert time.monotonic() - started < 0.5
    gate.set()
    assert finish(m, T0 + 6)[1]["role_hooks"]["results"] == {"50-ci-agent": 0}


def test_a_new_role_while_hooks_run_runs_after_them(tmp_path):
    gate = threading.Event()
    runner = FakeRunner()

    def slow(path, env, timeout):
        gate.wait(10)
        return runner(path, env, timeout)
    m = machine(tmp_path, slow)
    m.want(IDENTITY)
    m.tick(T0)
    m.want({**IDENTITY, "role": "controller", "previous_role": "builder",
            "changed_at": "2026-11-26T12:05:00Z"})
    gate.set()
    _, first = finish(m, T0 + 1)
    assert first["role_hooks"]["role"] == "builder"
    _, second = finish(m, T0 + 2)
    assert second["role_hooks"]["role"] == "controller"
    assert [env["HIVE_ROLE"] for _n, env, _t in runner.calls] == ["builder", "controller"]
    assert runner.calls[1][1]["HIVE_PREVIOUS_ROLE"] == "builder"


def test_a_clean_record_for_this_role_means_no_run_at_start(tmp_path):
    record = {"role": "builder", "previous_role": "runner", "role_since": "2026-11-26T12:00:00Z",
              "packages": "installed", "results": {"50-ci-agent": 0, "60-removed": 1},
              "ran_at": "x"}
    runner = FakeRunner()
    m = machine(tmp_path, runner)
    m.want({**IDENTITY, "role_hooks": record})
    assert m.tick(T0) == (float("inf"), None) and runner.calls == []


def test_a_hook_added_since_the_last_run_runs_them_all_at_start(tmp_path):
    record = {"role": "builder", "previous_role": "runner", "role_since": "2026-11-26T12:00:00Z",
              "packages": "installed", "results": {"50-ci-agent": 0}, "ran_at": "x"}
    runner = FakeRunner()
    m = machine(tmp_path, runner, names=("50-ci-agent", "60-new"))
    m.want({**IDENTITY, "role_hooks": record})
    m.tick(T0)
    _, recorded = finish(m)
    assert runner.names == ["50-ci-agent", "60-new"]
    assert recorded["role_hooks"]["results"] == {"50-ci-agent": 0, "60-new": 0}


@pytest.mark.parametrize("change", [
    {"results": {"50-ci-agent": 1}},                # a hook failed: retried at start
    {"results": {"50-ci-agent": "timeout"}},
    {"error": "role hooks folder ... has mode 0777"},  # refused: retried once fixed
    {"role": "runner"},                             # the record of another role ...
    {"role_since": "2026-11-26T10:00:00Z"},         # ... or of an earlier time in this role
    {"packages": "failed"}])                        # ran before the packages were installed
def test_a_run_that_did_not_end_cleanly_for_this_role_runs_again_at_start(tmp_path, change):
    record = {"role": "builder", "previous_role": "runner", "role_since": "2026-11-26T12:00:00Z",
              "packages": "installed", "results": {"50-ci-agent": 0}, "ran_at": "x", **change}
    runner = FakeRunner()
    m = machine(tmp_path, runner)
    m.want({**IDENTITY, "role_hooks": record})
    m.tick(T0)
    finish(m)
    assert runner.names == ["50-ci-agent"]


def test_nothing_escapes_the_worker(tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise KeyboardInterrupt("a BaseException from deep inside")
    monkeypatch.setattr(hooks, "run_all", broken)
    m = machine(tmp_path, FakeRunner())
    m.want(IDENTITY)
    m.tick(T0)
    _, recorded = finish(m)
    assert recorded["role_hooks"]["error"] == \
        "internal error: KeyboardInterrupt: a BaseException from deep inside"
    assert "Role hooks raised KeyboardInterrupt (a bug)" in caplog.text


def test_a_bug_while_looking_at_the_folder_means_running_them(tmp_path, monkeypatch):
    record = {"role": "builder", "previous_role": "runner", "role_since": "2026-11-26T12:00:00Z",
              "packages": "installed", "results": {"50-ci-agent": 0}, "ran_at": "x"}
    runner = FakeRunner()
    m = machine(tmp_path, runner)
    real = hooks.find_hooks
    monkeypatch.setattr(hooks, "find_hooks", lambda d: (_ for _ in ()).throw(TypeError("bug")))
    m.want({**IDENTITY, "role_hooks": record})  # does not raise
    monkeypatch.setattr(hooks, "find_hooks", real)
    m.tick(T0)
    finish(m)
    assert runner.names == ["50-ci-agent"]


# --- in the agent ---------------------------------------------------------------------------------

def drive(agent, clock, until):
    """Tick like the event loop, letting the install and the hooks' workers finish."""
    now = clock.now
    while now < until:
        agent.provisioner.join(5)
        agent.role_hooks.join(5)
        now = min(until, max(step(agent, clock, now), now + 0.01))
    agent.provisioner.join(5)
    agent.role_hooks.join(5)
    step(agent, clock, until)


def hooked(agent, tmp_path, answers=None):
    write_hook(tmp_path / "role.d", "50-ci-agent")
    runner = FakeRunner(answers)
    agent.role_hooks.runner = runner
    return runner


def test_a_founder_runs_its_hooks_and_records_them(make_agent, config, clock, tmp_path):
    agent = make_agent()
    runner = hooked(agent, tmp_path)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + 0.1, start=T0)
    drive(agent, clock, clock.now + 2)
    ident = state.read_identity(config.identity_path)
    assert ident["role"] == "founder"
    assert runner.names == ["50-ci-agent"]
    assert runner.calls[0][1] == {
        "PATH": hooks.HOOK_PATH, "HIVE_ROLE": "founder", "HIVE_PREVIOUS_ROLE": "",
        "HIVE_IDENTITY": str(config.identity_path), "HIVE_PACKAGES_STATE": "disabled"}
    assert ident["role_hooks"]["results"] == {"50-ci-agent": 0}
    assert ident["role_hooks"]["role_since"] == ident["assigned_at"]


def _settled_builder(config, **extra):
    state.write_json_atomic(config.identity_path, {
        "role": "builder", "packages": ["git"], "config": {}, "assigned_by": ["build1"],
        "assigned_at": "2026-11-26T10:00:00Z", "provisioned": False, "provision_error": None,
        **extra})


def test_hooks_wait_for_the_install_and_run_again_when_a_retry_succeeds(make_agent, config,
                                                                         clock, tmp_path):
    cfg = replace(config, install_packages=True)
    _settled_builder(cfg)
    gate = threading.Event()
    outcomes = ["apt-get install failed (exit 100): E: offline", None]

    def installer(packages):
        gate.wait(10)
        return outcomes.pop(0)
    agent = make_agent(installer=installer, cfg=cfg)
    runner = hooked(agent, tmp_path)
    agent.start(T0)
    for n in range(5):  # the install runs: no hook yet
        step(agent, clock, T0 + n * 0.5)
    assert runner.calls == []
    gate.set()
    drive(agent, clock, T0 + 5)
    assert [env["HIVE_PACKAGES_STATE"] for _n, env, _t in runner.calls] == ["failed"]
    drive(agent, clock, T0 + 5 + timing.PROVISION_RETRY)  # the retry succeeds
    assert [env["HIVE_PACKAGES_STATE"] for _n, env, _t in runner.calls] == ["failed",
                                                                           "installed"]
    ident = state.read_identity(cfg.identity_path)
    assert ident["provisioned"] is True and ident["role_hooks"]["packages"] == "installed"
    drive(agent, clock, T0 + 10 + 2 * timing.PROVISION_RETRY)
    assert len(runner.calls) == 2


def test_restarts_run_the_hooks_only_if_the_last_run_did_not_end_cleanly(make_agent, config,
                                                                        clock, tmp_path):
    _settled_builder(config)
    first = make_agent()
    runner = hooked(first, tmp_path, {"50-ci-agent": 1})
    first.start(T0)
    drive(first, clock, T0 + 2)
    assert runner.names == ["50-ci-agent"]
    assert state.read_identity(config.identity_path)["role_hooks"]["results"] == {"50-ci-agent": 1}
    # restarted: the hook failed last time, so it runs again (and now succeeds)
    second = make_agent()
    runner = hooked(second, tmp_path)
    second.start(clock.now)
    drive(second, clock, clock.now + 2)
    assert runner.names == ["50-ci-agent"]
    assert state.read_identity(config.identity_path)["role_hooks"]["results"] == {"50-ci-agent": 0}
    # restarted again: it ran cleanly for this role, nothing runs
    third = make_agent()
    runner = hooked(third, tmp_path)
    third.start(clock.now)
    drive(third, clock, clock.now + 2)
    assert runner.calls == []


def test_a_move_runs_the_hooks_with_the_previous_role(make_agent, config, clock, fake_sock,
                                                      caplog, tmp_path):
    agent = _runner_in_a_hive_without_controller(make_agent, config, clock, caplog)
    runner = hooked(agent, tmp_path)
    run_until(agent, clock, T0 + 2.0 + 0.05)
    agent.role_hooks.join(5)
    assert agent.phase == "move"
    assert [env["HIVE_ROLE"] for _n, env, _t in runner.calls] == ["runner"]  # at start
    identify = [m for m, _ in fake_sock.messages() if m.kind == "IDENTIFY"][0]
    for node, host, ip, _role, _h in MEMBERS:
        deliver(agent, "ADVICE", node, host, ip, clock.now + 0.01, to=agent.node_id,
                suggested_role="controller", packages=[], config={}, reason="needed",
                request_id=identify.get("request_id"))
    drive(agent, clock, clock.now + 1)
    after = state.read_identity(config.identity_path)
    assert after["role"] == "controller"
    assert [(env["HIVE_ROLE"], env["HIVE_PREVIOUS_ROLE"]) for _n, env, _t in runner.calls] == [
        ("runner", ""), ("controller", "runner")]
    assert after["role_hooks"]["role"] == "controller"
    assert after["role_hooks"]["role_since"] == after["changed_at"]
    assert "Role hook 50-ci-agent exited 0 (role 'controller', was 'runner')" in caplog.text
    assert json.loads(config.identity_path.read_text())["role_hooks"]["results"] == {
        "50-ci-agent": 0}
    assert protocol.parse_ts(after["role_hooks"]["ran_at"]) >= T0 + 2.0 - EPS


# --- the example hook (examples/role.d/50-ci-agent) with a stand-in systemctl ---------------------

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "role.d", "50-ci-agent")
FAKE_SYSTEMCTL = """#!/bin/bash
# A stand-in for systemctl: logs its arguments; the unit's state is files in $0's folder.
here=$(dirname "$0")
echo "$*" >> "$here/calls"
unit=${@: -1}
case "$1 $2" in
  "show --property=LoadState") [ -e "$here/loaded" ] && echo loaded || echo not-found ;;
  "--quiet is-enabled") [ -e "$here/enabled" ] ;;
  "--quiet is-active") [ -e "$here/active" ] ;;
  "enable --now") [ ! -e "$here/fail" ] || exit 1; touch "$here/enabled" "$here/active" ;;
  "disable --now") rm -f "$here/enabled" "$here/active" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def example(tmp_path, role, previous, unit_state=("loaded",)):
    fake = tmp_path / "bin"
    if not fake.exists():
        write_hook(fake, "systemctl", FAKE_SYSTEMCTL)
        for name in unit_state:
            (fake / name).touch()
    env = Run(role, previous, "2026-11-26T12:00:00Z", "installed").env("/x/identity.json")
    env["PATH"] = f"{fake}:{env['PATH']}"
    if role is None:
        del env["HIVE_ROLE"]
    result, output = run_hook(EXAMPLE, env, 10)
    calls = (fake / "calls").read_text().splitlines() if (fake / "calls").exists() else []
    states = sorted(p.name for p in fake.iterdir() if p.name in ("enabled", "active"))
    return result, output, calls, states


def test_example_hook_starts_the_ci_agent_on_a_builder_twice_harmlessly(tmp_path):
    result, output, calls, states = example(tmp_path, "builder", "runner")
    assert (result, states) == (0, ["active", "enabled"])
    assert output == "role builder (was runner): enabling and starting ci-agent.service\n"
    assert "enable --now --quiet -- ci-agent.service" in calls
    result, _output, calls, states = example(tmp_path, "builder", "")
    assert (result, states) == (0, ["active", "enabled"])


def test_example_hook_stops_the_ci_agent_when_the_node_leaves_builder(tmp_path):
    result, output, calls, states = example(tmp_path, "controller", "builder",
                                            ("loaded", "enabled", "active"))
    assert (result, states) == (0, [])
    assert output == "role controller (was builder): stopping and disabling ci-agent.service\n"
    assert calls[-1] == "disable --now --quiet -- ci-agent.service"
    result, output, calls, states = example(tmp_path, "controller", "builder")
    assert result == 0 and not calls[-1].startswith("disable")
    assert output == "role controller (was builder): ci-agent.service is already stopped and " \
                     "disabled\n"


def test_example_hook_without_the_unit_says_what_it_would_do(tmp_path):
    result, output, calls, _states = example(tmp_path, "builder", "", unit_state=())
    assert result == 0
    assert output == ("ci-agent.service is not installed: would enable and start it "
                      "(role builder, was none)\n")
    assert [c for c in calls if not c.startswith("show")] == []
    result, output, _calls, _states = example(tmp_path, "runner", "builder")
    assert result == 0 and "nothing to stop" in output


def test_example_hook_fails_loudly(tmp_path):
    result, output, _calls, _states = example(tmp_path, None, "")
    assert result != 0 and "HIVE_ROLE is not set" in output
    (tmp_path / "bin" / "fail").touch()
    result, _output, _calls, states = example(tmp_path, "builder", "")
    assert result == 1 and states == []
