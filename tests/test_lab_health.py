"""Integration: failure detection, goodbyes, hostile datagrams, secret rotation, errors, policies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path

from build_agent import timing
from lab import REPO, log_lines

DATA = REPO / "tests" / "data"


def policy_copy(name: str, directory: Path) -> str:
    """A copy of tests/data/NAME that load_policy accepts whoever owns the checkout: root's,
    mode 0644, in a directory only root can write (pytest's tmp_path, as we run as root)."""
    target = directory / name
    shutil.copyfile(DATA / name, target)
    target.chmod(0o644)
    return str(target)


def test_killed_node_leaves_every_peers_json_within_three_heartbeats(make_lab):
    # The heartbeat rule, for members that take no part in probing (probing: test_lab_probes).
    lab = make_lab(heartbeat=1, toml="probe_interval = 0")
    lab.up(4)
    lab.wait_for(lambda: all(len(lab.peer_names(i)) == 3 for i in range(1, 5)), 10,
                 "everyone to list everyone")
    lab.kill(4)
    killed = time.monotonic()
    took = lab.wait_for(lambda: all("build4" not in lab.peer_names(i) for i in (1, 2, 3)), 10,
                        "build4 to leave every peers.json")
    elapsed = time.monotonic() - killed
    print(f"kill -9 detected by every member after {elapsed:.2f}s (heartbeat 1s)")
    # 3 missed intervals of 1 s, plus up to 0.5 s for the file polling here.
    assert elapsed <= 3.5, took
    assert "build4 (%s) is dead" % lab.ip(4) in lab.log(1).replace("Peer ", "")

    lab.stop(3)  # graceful: a goodbye, dropped at once
    stopped = time.monotonic()
    lab.wait_for(lambda: all("build3" not in lab.peer_names(i) for i in (1, 2)), 5,
                 "build3 to leave after its goodbye")
    elapsed = time.monotonic() - stopped
    print(f"graceful stop seen by every member after {elapsed:.2f}s")
    assert elapsed <= 1.0
    assert "left the hive" in lab.log(1)


def test_hostile_datagrams_are_dropped_and_the_hive_carries_on(make_lab):
    lab = make_lab()
    lab.up(2)
    attacker = lab.join()
    lab.wait(attacker)
    secret = str(lab.dir / "shared_secret")
    for target in (lab.ip(1), f"{lab.subnet}.255"):
        result = lab.exec(attacker, lab.env["HIVE_LAB_PYTHON"], str(DATA / "send_datagrams.py"),
                          target, secret, "4000")
        sent = json.loads(result.stdout)
        assert sum(sent.values()) == 4000, sent
    for i in (1, 2):
        assert lab.alive(i, "agent") and lab.alive(i, "advisor"), lab.log(i)
    # The one valid intruder STATUS was accepted once; its 500 replays changed nothing.
    assert log_lines(lab.log(1)).count("Peer intruder (%s) is in the hive as 'builder'"
                                       % lab.ip(attacker)) == 1
    # The hive still works: a new node joins with the right role.
    newcomer = lab.join()
    lab.wait(newcomer)
    # founder, controller and the attacker (a builder) are 3 peers, intruder or not: a runner
    assert lab.role(newcomer) == "runner"
    assert "Traceback" not in lab.log(1) + lab.log(1, "advisor")


def test_secret_rotation_with_reload(make_lab):
    lab = make_lab(heartbeat=1)
    lab.up(2)
    lab.wait_for(lambda: "build1" in lab.peer_names(2), 5, "build2 to list build1")
    old = (lab.dir / "shared_secret").read_text().strip()
    new = "0123456789abcdef-rotated-secret"
    # build1 signs with the new secret; build2 knows only the old one: it stops hearing build1.
    (lab.host_dir(1) / "shared_secret").write_text(f"{new}\n{old}\n")
    os.kill(lab.pid(1), signal.SIGHUP)
    os.kill(lab.pid(1, "advisor"), signal.SIGHUP)
    # (Two hosts: build2's probes of build1 hear nobody else, so they accuse nobody; the
    # heartbeat backstop drops it: 6 of the intervals it stated, 3 heartbeats of 1 s each.)
    backstop = timing.DEAD_AFTER_INTERVALS_PROBED * timing.STATUS_INTERVALS_PROBED * 1
    lab.wait_for(lambda: "build1" not in lab.peer_names(2), backstop + 4,
                 "build2 to stop hearing build1")
    assert "Reloaded the shared secret (2 secret(s))" in lab.log(1)
    # build2 learns the new secret as a second line: it verifies build1 again.
    (lab.host_dir(2) / "shared_secret").write_text(f"{old}\n{new}\n")
    os.kill(lab.pid(2), signal.SIGHUP)
    lab.wait_for(lambda: "build1" in lab.peer_names(2), 8, "build2 to hear build1 again")
    assert lab.alive(1) and lab.alive(2)


def test_hive_watch_shows_verified_and_rejected_messages(make_lab):
    lab = make_lab()
    lab.up(1)
    watcher = 1  # a member: `hive watch` sees its traffic beside its running daemons
    import subprocess
    out_file = lab.dir / "watch.out"
    # Its own process group (stopped with Ctrl-C's SIGINT once the datagrams are seen; 60 s at
    # most): a join on a loaded machine may take longer than a fixed window.
    with open(out_file, "w") as out:
        watch = subprocess.Popen([str(REPO / "scripts" / "hive-lab"), "hive", str(watcher),
                                  "watch", "--json", "--seconds", "60"], env=lab.env,
                                 stdout=out, stdin=subprocess.DEVNULL, start_new_session=True)

    def records() -> list[dict]:
        return [json.loads(line) for line in out_file.read_text().splitlines() if line]
    try:
        time.sleep(1.0)
        joiner = lab.join()
        lab.wait(joiner)
        lab.exec(joiner, lab.env["HIVE_LAB_PYTHON"], str(DATA / "send_datagrams.py"),
                 f"{lab.subnet}.255", str(lab.dir / "shared_secret"), "16")
        lab.wait_for(lambda: {"bad signature", "wrong magic", "replayed", "stale"}
                     <= {r["reason"] for r in records()}, 20,
                     "hive watch to show the rejected datagrams")
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, signal.SIGINT)
        watch.wait(timeout=30)
    kinds = {r["payload"]["kind"] for r in records() if r["verified"]}
    assert {"HELLO", "IDENTIFY", "STATUS"} <= kinds, records()
    reasons = {r["reason"] for r in records() if not r["verified"]}
    assert {"bad signature", "wrong magic", "replayed", "stale"} <= reasons, reasons


def test_startup_errors_are_one_clear_line(make_lab, tmp_path):
    lab = make_lab()
    host = lab.add(1)[0]
    python = lab.env["HIVE_LAB_PYTHON"]
    env = ["env", f"PYTHONPATH={REPO}"]

    def run(module, config_text, secret=None):
        config = tmp_path / "hive.toml"
        config.write_text(config_text)
        return lab.exec(host, *env, python, "-m", module, "--config", str(config), check=False,
                        timeout=20)

    result = run("build_agent", 'colour = "blue"\n')
    assert result.returncode == 1
    assert "unknown key(s)" in result.stderr and "colour" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    missing = tmp_path / "nope"
    result = run("build_agent", f'secret_file = "{missing}"\ninterface = "eth0"\n')
    assert result.returncode == 1 and "no shared secret at" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    weak = tmp_path / "weak"
    weak.write_text("short\n")
    weak.chmod(0o600)
    result = run("build_agent", f'secret_file = "{weak}"\n')
    assert result.returncode == 1 and "shorter than 16" in result.stderr

    public = tmp_path / "public"
    public.write_text("a-long-enough-secret-but-public\n")
    public.chmod(0o644)
    result = run("build_advisor", f'secret_file = "{public}"\n')
    assert result.returncode == 1 and f"chmod 0600 {public}" in result.stderr

    secret = lab.host_dir(host) / "shared_secret"
    result = run("build_advisor", f'secret_file = "{secret}"\ninterface = "eth0"\n'
                                  f'policy = "{policy_copy("policy_broken.py", tmp_path)}"\n')
    assert result.returncode == 1
    assert "does not define suggest_role" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = run("build_agent", f'secret_file = "{secret}"\ninterface = "nosuch0"\n')
    assert result.returncode == 1 and "interface nosuch0" in result.stderr


def test_a_failing_policy_falls_back_to_the_default(make_lab, tmp_path):
    lab = make_lab(policy=policy_copy("policy_raises.py", tmp_path))
    lab.up(3)
    # build2 (even) gets the policy's role; build3 (odd) makes the policy raise: default role.
    assert lab.role(2) == "tester"
    assert lab.identity(2)["config"] == {"slots": 2}
    assert lab.role(3) == "builder"
    advisor_log = lab.log(1, "advisor") + lab.log(2, "advisor")
    assert "Policy failed for build3 (RuntimeError: policy bug); using the default policy" in advisor_log
    assert lab.alive(1, "advisor") and lab.alive(2, "advisor")


class NotifyListener:
    """A stand-in for systemd's notify socket: records (when, sender pid, text) of every
    sd_notify message (SO_PASSCRED tells us who sent it)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int, str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stopped.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", value[:12])[0]
            self.messages.append((time.monotonic(), pid, data.decode(errors="replace")))

    def longest_silence(self, pid: int, start: float, end: float) -> float:
        """The longest time within [start, end] without a WATCHDOG=1 from pid."""
        pings = [when for when, sender, text in self.messages
                 if sender == pid and "WATCHDOG=1" in text.split("\n") and start <= when <= end]
        marks = [start] + pings + [end]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def test_a_slow_or_unruly_policy_holds_up_no_join(make_lab, tmp_path):
    """build3's advice takes the policy 30 s: the default answers it at its deadline, build4
    right behind it gets the policy's own answer, the advisors' loops keep pinging the watchdog.
    build5's and build6's answers (a set, NaN) are dropped by every receiver: the default
    answers them at once."""
    lab = make_lab(heartbeat=1, policy=policy_copy("policy_unruly.py", tmp_path))
    notify = NotifyListener(tmp_path / "notify.sock")
    # Both daemons of every host talk to our socket as to systemd, with a 1 s watchdog.
    lab.env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    try:
        lab.up(2)
        advisors = {i: lab.pid(i, "advisor") for i in (1, 2)}
        build3, build4 = lab.add(2)
        started = time.monotonic()
        lab.start(build3)
        time.sleep(0.3)
        started4 = time.monotonic()
        lab.start(build4)
        lab.wait_for(lambda: lab.role(build3), 15, "build3's identity")
        took3 = time.monotonic() - started
        lab.wait_for(lambda: lab.role(build4), 15, "build4's identity")
        took4 = time.monotonic() - started4
        print(f"slow policy: build3 identified {took3:.2f}s after its start, build4 (queued "
              f"behind it) {took4:.2f}s after its start (policy timeout "
              f"{timing.POLICY_TIMEOUT:g}s, asker's ADVICE_TIMEOUT {timing.ADVICE_TIMEOUT:g}s)")
        assert lab.identity(build3)["role"] == "builder"
        assert lab.identity(build3)["reason"] == "cluster needs builders"  # the default's
        assert lab.identity(build4)["role"] == "builder"
        assert lab.identity(build4)["reason"] == "policy: cluster needs builders"  # the policy's
        assert took3 < 10 and took4 < 10, (took3, took4)

        for host in lab.add(2):  # build5 (a set in its config), build6 (NaN)
            begun = time.monotonic()
            lab.start(host)
            lab.wait_for(lambda: lab.role(host), 15, f"build{host}'s identity")
            took = time.monotonic() - begun
            print(f"unruly answer: build{host} identified {took:.2f}s after its start")
            identity = lab.identity(host)
            assert (identity["role"], identity["config"]) == ("runner", {}), identity
            assert identity["reason"] == "have builders, need test runners"
            assert time.monotonic() - begun < 15
        time.sleep(max(0.0, started + 10 - time.monotonic()))  # build3's calls still sleep
        window_end = time.monotonic()
        for i, pid in advisors.items():
            assert lab.alive(i, "advisor") and lab.pid(i, "advisor") == pid, lab.log(i, "advisor")
            silence = notify.longest_silence(pid, started, window_end)
            print(f"build{i}'s advisor: longest watchdog silence {silence:.2f}s over "
                  f"{window_end - started:.1f}s (ping period 0.5s) while its policy slept 30 s")
            assert silence < 5, silence
        advisor_log = lab.log(1, "advisor") + lab.log(2, "advisor")
        assert (f"Policy failed for build3 (no answer within {timing.POLICY_TIMEOUT:g} s); "
                f"using the default policy") in advisor_log
        assert "Policy failed for build5 (invalid answer: not JSON: Object of type set" \
            in advisor_log
        assert "Policy failed for build6 (invalid answer: not JSON: Out of range float" \
            in advisor_log
        assert "Traceback" not in advisor_log
    finally:
        notify.close()
