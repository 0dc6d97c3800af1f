"""Integration: build work across a hive of network namespaces (heartbeat 1 s).

Hosts 1..n join one after another: build1 founder, build2 controller, build3-4 builders, build5+
runners.  Tasks are enabled ([tasks] enabled = true, roles builder and runner) on the hosts a
test chooses; they run as child processes (no systemd here) as uid 65534.  Tasks leave marks in
a world-writable folder of the lab, so "ran exactly once" is counted outside the hive.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from build_agent import control, protocol
from lab import REPO

DATA = REPO / "tests" / "data"
FINISHED = ("done", "failed", "lost", "cancelled")


class TaskLab:
    def __init__(self, lab, n: int, enabled=None, slots: int | None = None) -> None:
        self.lab = lab
        self.marks = lab.dir / "marks"
        hosts = lab.add(n)
        self.marks.mkdir()
        os.chmod(self.marks, 0o1777)
        self.enabled = [i for i in hosts if enabled is None or i in enabled]
        for i in self.enabled:
            with open(lab.host_dir(i) / "hive.toml", "a") as handle:
                handle.write(f'[tasks]\nenabled = true\nroles = ["builder", "runner"]\n'
                             f'work_dir = "{lab.dir / "work" / f"h{i}"}"\n'
                             + (f"slots = {slots}\n" if slots else ""))
        for i in hosts:
            lab.start(i)
            lab.wait(i)
        workers = [i for i in self.enabled if i >= 3]
        lab.wait_for(lambda: self.workers_seen() >= len(workers), 15,
                     "the controller to see every worker's task slots")

    def workers_seen(self) -> int:
        peers = (self.lab.peers(2) or {}).get("peers") or []
        return sum(1 for p in peers if (p.get("capacity") or {}).get("task_slots"))

    def ask(self, payload: dict, host: int = 2, timeout: float = 10) -> dict:
        return control.request(self.lab.host_dir(host) / "state" / "control.sock", payload,
                               timeout)

    def submit(self, argv: list[str], **fields) -> str:
        answer = self.ask({"op": "task.submit", "argv": argv, **fields})
        assert "task" in answer, answer
        return answer["task"]["id"]

    def tasks(self) -> dict[str, dict]:
        return {t["id"]: t for t in self.ask({"op": "task.list"})["tasks"]}

    def wait_all(self, ids, timeout: float) -> dict[str, dict]:
        box = {}

        def done():
            try:
                box["tasks"] = self.tasks()
            except control.ControlError:  # the controller's agent is (re)starting
                return False
            return all(box["tasks"][i]["state"] in FINISHED for i in ids)
        self.lab.wait_for(done, timeout, "every task to finish", step=0.2)
        return box["tasks"]

    def mark(self, name: str, code: int = 0, extra: str = "") -> list[str]:
        """A command that writes 'TASK_ID HOSTNAME' to marks/NAME, then exits CODE."""
        return ["sh", "-c", f'{extra}echo "$HIVE_TASK_ID $(hostname)" >> {self.marks / name}; '
                            f'exit {code}']

    def marks_of(self, name: str) -> list[tuple[str, str]]:
        try:
            return [tuple(line.split()) for line in (self.marks / name).read_text().splitlines()]
        except FileNotFoundError:
            return []

    def node_id(self, i: int) -> str:
        return (self.lab.host_dir(i) / "state" / "node_id").read_text().split()[0]

    def send_task(self, via: int, target: int, sender: int, task_id: str, argv: list[str],
                  *options: str) -> None:
        """A TASK datagram signed as host SENDER (its node id and address), sent from host VIA."""
        lab = self.lab
        lab.exec(via, lab.env["HIVE_LAB_PYTHON"], str(DATA / "send_task.py"), lab.ip(target),
                 str(lab.dir / "shared_secret"), self.node_id(sender), f"build{sender}",
                 lab.ip(sender), self.node_id(target), task_id, "1", *options, "--", *argv)


def test_forty_tasks_to_two_builders_run_once_each_spread_with_their_exit_statuses(make_lab):
    lab = make_lab(heartbeat=1)
    tl = TaskLab(lab, 5)  # build3, build4 builders; build5 a runner (tasks on, not its role)
    started = time.monotonic()
    expected = {}
    for i in range(40):
        expected[tl.submit(tl.mark("ran", i % 4, extra="sleep 0.3; "), role="builder")] = i % 4
    submitted = time.monotonic() - started
    queue_seen = []  # the controller's queue depth as a builder sees it in its STATUS

    def finished():
        queue_seen.append({p["hostname"]: p for p in lab.peers(3)["peers"]}["build2"]["queue"])
        return all(t["state"] in FINISHED for i, t in tl.tasks().items() if i in expected)
    lab.wait_for(finished, 120, "every task to finish", step=0.1)
    tasks = tl.tasks()
    took = time.monotonic() - started
    ran = tl.marks_of("ran")
    assert sorted(task_id for task_id, _ in ran) == sorted(expected)  # each exactly once
    hosts = {host for _, host in ran}
    assert hosts == {"build3", "build4"}, ran  # spread across both, never the runner
    per_host = {h: sum(1 for _, x in ran if x == h) for h in hosts}
    for task_id, code in expected.items():
        task = tasks[task_id]
        assert task["state"] == ("done" if code == 0 else "failed"), task
        assert task["result"]["outcome"] == "exited" and task["result"]["rc"] == code
        assert task["worker"] == dict(ran)[task_id]
        assert len(task["attempts"]) >= 1 and task["attempts"][-1]["state"] == "ended"
    print(f"40 tasks: submitted in {submitted:.2f}s, all finished {took:.2f}s after the first "
          f"submit; per builder {per_host}")

    # `hive task run` exits with the task's exit status, and says where it ran
    result = lab.hive(2, "task", "run", "--role", "builder", "--", "sh", "-c",
                      "echo bye; exit 3", check=False)
    assert result.returncode == 3, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("task ") and ": exit 3 in " in first and "(builder)" in first
    assert result.stdout.splitlines()[1:] == ["bye"]
    # the queue depth is in the controller's STATUS: a builder saw it grow, and drop to 0
    assert max(queue_seen) > 0, queue_seen  # (its value depends on when heartbeats fell)
    lab.wait_for(lambda: {p["hostname"]: p for p in lab.peers(3)["peers"]}["build2"]["queue"]
                 == 0, 5, "build3 to see an empty queue")
    print(f"queue depth seen by build3 during the burst: up to {max(queue_seen)}")
    assert "Traceback" not in "".join(lab.log(i) for i in lab.hosts())


def test_a_builder_killed_mid_task_the_task_reruns_on_the_other_and_is_reported_once(make_lab):
    lab = make_lab(heartbeat=1)
    tl = TaskLab(lab, 4)
    argv = ["sh", "-c", f'echo "$HIVE_TASK_ID $(hostname)" >> {tl.marks / "start"}; sleep 8; '
                        f'echo "$HIVE_TASK_ID $(hostname)" >> {tl.marks / "end"}']
    task_id = tl.submit(argv, role="builder")
    lab.wait_for(lambda: tl.marks_of("start"), 10, "the task to start")
    first_host = tl.marks_of("start")[0][1]
    victim = int(first_host.removeprefix("build"))
    other = 7 - victim  # build3 <-> build4
    lab.kill(victim)
    killed = time.monotonic()
    lab.wait_for(lambda: len(tl.marks_of("start")) == 2, 20, "the task to start again")
    rerun_after = time.monotonic() - killed
    tasks = tl.wait_all([task_id], 30)
    task = tasks[task_id]
    assert task["state"] == "done"
    assert [(a["worker"], a["state"]) for a in task["attempts"]] == [
        (f"build{victim}", "lost"), (f"build{other}", "ended")]
    assert task["result"]["worker"] == f"build{other}" and task["result"]["attempt"] == 2
    assert tl.marks_of("start") == [(task_id, f"build{victim}"), (task_id, f"build{other}")]
    # the killed builder's task died with its agent; only the re-run finished
    time.sleep(1)
    assert tl.marks_of("end") == [(task_id, f"build{other}")]
    assert list(tl.tasks()) == [task_id]  # reported once
    print(f"kill -9 of build{victim}: the task started again on build{other} "
          f"{rerun_after:.2f}s later (heartbeat 1 s)")


def test_every_task_finishes_once_with_ten_percent_datagram_loss_everywhere(make_lab):
    lab = make_lab(heartbeat=1)
    tl = TaskLab(lab, 5)
    for i in lab.hosts():
        nft = ["nft"]
        lab.exec(i, *nft, "add", "table", "inet", "lab")
        lab.exec(i, *nft, "add", "chain", "inet", "lab", "in",
                 "{ type filter hook input priority 0; }")
        lab.exec(i, *nft, "add", "rule", "inet", "lab", "in", "udp", "dport", "50555", "numgen",
                 "random", "mod", "100", "<", "10", "counter", "drop")
    # 40 tasks of a second each: ~10 s of heartbeats, probes and results through the loss
    expected = {tl.submit(tl.mark("ran", i % 3, extra="sleep 1; "), role="builder"): i % 3
                for i in range(40)}
    started = time.monotonic()
    tasks = tl.wait_all(expected, 180)
    took = time.monotonic() - started
    assert sorted(t for t, _ in tl.marks_of("ran")) == sorted(expected)
    for task_id, code in expected.items():
        assert tasks[task_id]["result"]["rc"] == code
        assert tasks[task_id]["state"] == ("done" if code == 0 else "failed")
    dropped = 0
    for i in lab.hosts():
        listing = lab.exec(i, "nft", "list", "chain", "inet", "lab", "in").stdout
        dropped += int(listing.split("packets ")[1].split()[0])
    assert dropped > 0
    print(f"10% loss on every host: 40 tasks finished once each in {took:.2f}s; "
          f"{dropped} datagrams dropped")


def test_restarts_of_the_controller_and_of_a_worker_lose_no_task(make_lab):
    lab = make_lab(heartbeat=1)
    tl = TaskLab(lab, 4, slots=2)  # build3, build4: two slots each
    quick = [tl.submit(tl.mark("quick"), role="builder") for _ in range(2)]
    tl.wait_all(quick, 20)
    slow = [tl.submit(tl.mark("slow", extra="sleep 3; "), role="builder") for _ in range(6)]
    time.sleep(0.5)  # four run, two wait in the queue
    assert sum(1 for t in tl.tasks().values() if t["state"] == "queued") == 2
    lab.restart(2)  # the controller stops (SIGTERM) and starts again
    tasks = tl.wait_all(quick + slow, 60)
    assert {tasks[i]["state"] for i in quick + slow} == {"done"}
    assert sorted(t for t, _ in tl.marks_of("quick")) == sorted(quick)
    assert sorted(t for t, _ in tl.marks_of("slow")) == sorted(slow)  # each ran once
    assert "Task queue loaded: 2 done, 4 running, 2 queued" in lab.log(2)

    # a worker's agent restarts while its task runs: the task dies with it (it is the agent's
    # child), the restarted agent reports the attempt lost, the task runs again
    argv = ["sh", "-c", f'echo "$HIVE_TASK_ID $(hostname)" >> {tl.marks / "start"}; sleep 4; '
                        f'echo "$HIVE_TASK_ID $(hostname)" >> {tl.marks / "end"}']
    task_id = tl.submit(argv, role="builder")
    lab.wait_for(lambda: tl.marks_of("start"), 10, "the task to start")
    first = int(tl.marks_of("start")[0][1].removeprefix("build"))
    lab.restart(first)
    task = tl.wait_all([task_id], 40)[task_id]
    assert task["state"] == "done"
    assert [a["state"] for a in task["attempts"]] == ["lost", "ended"]
    assert "restarted while it ran" in task["attempts"][0]["error"]
    time.sleep(0.5)
    assert [t for t, _ in tl.marks_of("end")] == [task_id]  # it finished once
    assert len(tl.marks_of("start")) == 2


def test_forged_replayed_and_non_controller_tasks_run_nothing(make_lab):
    lab = make_lab(heartbeat=1)
    # tasks on build3 only: build4 is a builder without them, build5 a runner without them
    tl = TaskLab(lab, 5, enabled=[1, 2, 3])
    python = lab.env["HIVE_LAB_PYTHON"]
    captured = lab.dir / "task.bin"
    capture = subprocess.Popen([str(REPO / "scripts" / "hive-lab"), "exec", "3", python,
                                str(DATA / "capture_datagram.py"), "TASK", str(captured), "20"],
                               env=lab.env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # (the capture is listening)
        task_id = tl.submit(tl.mark("real"), role="builder")
        out, _ = capture.communicate(timeout=30)
    finally:
        capture.kill()
    assert json.loads(out)["captured"] == "TASK"
    assert protocol.parse_envelope(captured.read_bytes())[0]["id"] == task_id
    tl.wait_all([task_id], 30)
    assert tl.marks_of("real") == [(task_id, "build3")]

    # 1. the controller's real TASK again, byte for byte: a replay
    lab.exec(1, python, str(DATA / "send_task.py"), "--replay", str(captured), lab.ip(3))
    # 2. a TASK forged without the secret, "from the controller"
    tl.send_task(1, 3, 2, "forged00000001", tl.mark("forged"), "--wrong-secret")
    # 3. a TASK signed with the secret by a member that is not the controller (build4)
    tl.send_task(4, 3, 4, "builder0000001", tl.mark("nonctl"))
    # 4. a real controller's TASK to a node without [tasks] enabled (build5)
    tl.send_task(2, 5, 2, "notenabled0001", tl.mark("disabled"))
    time.sleep(3)
    # 5. the worker restarts (its replay guard starts empty): the captured TASK once more
    lab.restart(3)
    lab.wait_for(lambda: "build3" in lab.peer_names(2), 10, "build3 back in the hive")
    lab.exec(1, python, str(DATA / "send_task.py"), "--replay", str(captured), lab.ip(3))
    time.sleep(3)

    assert tl.marks_of("real") == [(task_id, "build3")]  # the replays ran nothing
    assert tl.marks_of("forged") == [] and tl.marks_of("nonctl") == []
    assert tl.marks_of("disabled") == []
    log3 = lab.log(3)
    assert "Refusing TASK builder0000001 from build4" in log3 and \
        "only a member whose role is 'controller' may send tasks, and it is 'builder'" in log3
    assert "Refusing task notenabled0001 from build2: tasks are not enabled on build5" in \
        lab.log(5)
    assert log3.count(f"Running task {task_id} attempt 1") == 1
    # and the controller places no work on a node without tasks
    answer = tl.ask({"op": "task.submit", "argv": ["true"], "role": "runner"})
    assert answer["error"].startswith("no member with role runner runs tasks (build5)")
    assert list(tl.tasks()) == [task_id]


def test_task_measurements(make_lab):
    """Dispatch latency, overhead against running locally, throughput of 200 tiny tasks on 4
    workers: printed, not asserted (a shared 2-core machine)."""
    lab = make_lab(heartbeat=1)
    tl = TaskLab(lab, 6, slots=2)  # workers: build3, build4 (builders), build5, build6 (runners)
    python = lab.env["HIVE_LAB_PYTHON"]
    # dispatch latency: submit (here) -> the command's first instruction on the worker
    latencies = []
    for i in range(10):
        before = time.time()
        task_id = tl.submit(["sh", "-c", f"date +%s.%N > {tl.marks}/lat{i}"], role="builder")
        tl.wait_all([task_id], 20)
        latencies.append(float((tl.marks / f"lat{i}").read_text()) - before)
    # overhead: `hive task run` against the same command run locally on the controller host
    script = ("import subprocess, sys, time, json\n"
              "def t(argv):\n"
              "    s = time.monotonic(); subprocess.run(argv, check=False,"
              " stdout=subprocess.DEVNULL); return time.monotonic() - s\n"
              "cmd = ['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done']\n"
              "hive = [sys.executable, '-m', 'build_agent.cli', '--config', sys.argv[1], 'task',"
              " 'run', '--role', 'builder', '--'] + cmd\n"
              "cli = [sys.executable, '-m', 'build_agent.cli', '--config', sys.argv[1], 'task',"
              " 'list']\n"
              "loc = [t(cmd) for _ in range(10)]\nrem = [t(hive) for _ in range(10)]\n"
              "lst = [t(cli) for _ in range(10)]\n"
              "print(json.dumps({'local': loc, 'hive': rem, 'cli': lst}))\n")
    out = lab.exec(2, "env", f"PYTHONPATH={REPO}", python, "-c", script,
                   str(lab.host_dir(2) / "hive.toml"), timeout=300).stdout
    times = json.loads(out)
    # throughput: 200 tiny tasks on the four workers (any role)
    started = time.monotonic()
    ids = [tl.submit(["true"]) for _ in range(200)]
    submitted = time.monotonic() - started
    tasks = tl.wait_all(ids, 300)
    took = time.monotonic() - started
    per_worker = {}
    for t in tasks.values():
        if t["id"] in ids:
            per_worker[t["worker"]] = per_worker.get(t["worker"], 0) + 1
    assert all(tasks[i]["state"] == "done" for i in ids)
    med = statistics.median
    print(f"dispatch latency (submit -> command running on the worker): median "
          f"{med(latencies) * 1000:.0f} ms (min {min(latencies) * 1000:.0f}, max "
          f"{max(latencies) * 1000:.0f}, n=10)")
    print(f"overhead: a ~{med(times['local']) * 1000:.0f} ms command locally vs `hive task run` "
          f"{med(times['hive']) * 1000:.0f} ms (median of 10; overhead "
          f"{(med(times['hive']) - med(times['local'])) * 1000:.0f} ms per task, of which the "
          f"CLI's own start, as `hive task list`, {med(times['cli']) * 1000:.0f} ms)")
    print(f"throughput: 200 tiny tasks on 4 workers (2 slots each) in {took:.2f}s "
          f"({200 / took:.1f} tasks/s; submitting took {submitted:.2f}s); per worker {per_worker}")
