"""Tasks: placement, the queue on disk across restarts, retransmission and de-duplication over a
lossy fake network with a fake clock, and the worker's refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from build_agent import protocol, tasks, timing
from build_agent.config import TasksConfig
from build_agent.tasks import Controller, TaskError, TaskStore, Worker, WorkerInfo
from hive_fakes import SECRET, T0, FakeClock, message
from task_sim import FakeRunner, Hive, Net, Reply

BUILDER_TASKS = TasksConfig(enabled=True, roles=("builder",), slots=2)


def member(name, role="builder", slots=2, load=0.0, cores=2, **caps):
    return SimpleNamespace(node_id=f"node-{name}", hostname=name, ip=f"10.9.0.{len(name)}",
                           role=role, capabilities={"cpu_cores": cores, **caps},
                           load=[load, load, load],
                           capacity={"task_slots": slots} if slots else {})


def info(name, **kw) -> WorkerInfo:
    return tasks.worker_info(member(name, **kw))


@pytest.fixture
def controller(tmp_path, clock):
    return Controller(TaskStore(tmp_path / "queue"), "build2", clock)


def job(label: str, rc: int = 0, seconds: float = 1.0) -> list[str]:
    return ["job", label, str(rc), str(seconds)]


# --- placement ------------------------------------------------------------------------------------

def test_placement_picks_the_role_then_fewest_running_per_slot_then_least_load(controller):
    builders = [info("b1", load=1.5), info("b2", load=0.2), info("r1", role="runner", load=0.0)]
    task = controller.submit(["make"], role="builder", members=[member("b1"), member("b2")])
    assert controller.choose(task, builders, 0).hostname == "b2"  # least load
    # b2 already runs two of our tasks (all its slots): b1 even though it is busier
    assert controller.choose(task, builders, 0, running={"node-b2": 2}).hostname == "b1"
    # one running on each: the one with more slots left relatively (b1 has 4 slots)
    wide = [info("b1", slots=4, load=1.5), info("b2", load=0.2)]
    assert controller.choose(task, wide, 0, running={"node-b1": 1, "node-b2": 1}).hostname == "b1"
    assert controller.choose(task, builders, 0, running={"node-b1": 2, "node-b2": 2}) is None


def test_placement_by_capability_and_any_role(controller):
    gpu = [info("b1"), info("g1", role="runner", has_gpu=True)]
    task = controller.submit(["train"], capability="has_gpu",
                             members=[member("b1"), member("g1", role="runner", has_gpu=True)])
    assert controller.choose(task, gpu, 0).hostname == "g1"
    anywhere = controller.submit(["true"], members=[member("b1")])
    assert controller.choose(anywhere, [info("r1", role="runner")], 0).hostname == "r1"


def test_placement_avoids_the_worker_where_it_was_lost_unless_it_is_the_only_one(controller):
    task = controller.submit(["make"], role="builder", members=[member("b1")])
    task.avoid.append("node-b1")
    assert controller.choose(task, [info("b1", load=0.0), info("b2", load=3.0)], 0).hostname == "b2"
    assert controller.choose(task, [info("b1")], 0).hostname == "b1"


def test_a_busy_worker_gets_nothing_for_a_moment(controller):
    task = controller.submit(["make"], role="builder", members=[member("b1")])
    controller.busy_until["node-b1"] = 10.0
    assert controller.choose(task, [info("b1")], 9.9) is None
    assert controller.choose(task, [info("b1")], 10.0).hostname == "b1"


def test_members_without_task_slots_are_no_workers():
    assert tasks.worker_info(member("b1", slots=0)) is None
    assert tasks.worker_info(member("b1", slots=None)) is None
    odd = member("b1")
    odd.capacity = {"task_slots": True}
    assert tasks.worker_info(odd) is None


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, expected", [
    (dict(argv=[]), "empty command"),
    (dict(argv=[""]), "empty command"),
    (dict(argv="make"), "empty command"),
    (dict(argv=["make"], role="Builder!"), "is not a role name"),
    (dict(argv=["make"], role="tester"), "no member of the hive has role 'tester' "
                                         "(roles now: builder, runner)"),
    (dict(argv=["make"], role="runner"), "no member with role runner runs tasks (r1): set "
                                         "[tasks] enabled = true"),
    (dict(argv=["make"], capability="has_gpu"), "no member of the hive matches capability "
                                                "has_gpu"),
    (dict(argv=["make"], role="builder", timeout=0), "--timeout must be from 1 to"),
    (dict(argv=["make"], role="builder", retries=11), "--retries must be from 0 to 10"),
    (dict(argv=["make"], role="builder", repo="--upload-pack=x"), "--repo must be"),
    (dict(argv=["x" * 9000], role="builder"), "do not fit in one hive datagram"),
    (dict(argv=["make"], role="builder", repo="r" * 4000), "do not fit in one hive datagram"),
])
def test_bad_requests_get_one_clear_line_and_queue_nothing(controller, tmp_path, kwargs,
                                                           expected):
    members = [member("b1"), member("r1", role="runner", slots=0)]
    with pytest.raises(TaskError) as err:
        controller.submit(members=members, **kwargs)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert controller.tasks == {}
    assert not (tmp_path / "queue").exists() or not list((tmp_path / "queue").iterdir())


def test_a_worker_that_no_longer_runs_tasks_sends_the_task_back_to_the_queue(controller, clock):
    """Its role changed (or tasks were turned off) after the controller's view: 'busy', and the
    task goes to another worker, not failed."""
    members = {"node-b1": member("b1", load=0.0), "node-b2": member("b2", load=2.0)}
    task = controller.submit(["make"], role="builder", members=members.values())
    outs, _ = controller.tick(0.0, members, True)
    assert [o.fields["to"] for o in outs] == ["node-b1"]
    nack = message("ACK", "node-b1", "b1", "10.9.0.2", clock.now, to="node-build2", of="TASK",
                   task_id=task.id, attempt=1, state="busy",
                   error="b1 runs tasks only as builder, and it is 'runner' now")
    controller.on_ack(nack, 0.1)
    assert task.state == "queued" and task.attempts[0].state == "busy"
    outs, _ = controller.tick(0.2, members, True)
    assert [(o.fields["to"], o.fields["attempt"]) for o in outs] == [("node-b2", 2)]


# --- the queue on disk ------------------------------------------------------------------------------

def test_the_queue_and_results_survive_a_controller_restart(tmp_path, clock):
    store = TaskStore(tmp_path / "queue")
    first = Controller(store, "build2", clock)
    members = {"node-b1": member("b1")}
    done = first.submit(job("a"), role="builder", members=members.values())
    running = first.submit(job("b"), role="builder", members=members.values())
    waiting = first.submit(job("c"), role="builder", members=members.values())
    outs, _ = first.tick(0.0, members, True)  # two slots: a and b go out, c waits
    assert sorted(o.fields["id"] for o in outs if o.kind == "TASK") == sorted([done.id, running.id])
    b1 = ("node-b1", "b1", "10.9.0.2")

    def from_b1(kind, **fields):
        return message(kind, b1[0], b1[1], b1[2], clock.now, to="node-build2", **fields)
    for task in (done, running):
        first.on_ack(from_b1("ACK", of="TASK", task_id=task.id, attempt=1, state="accepted"), 0.1)
    acks = first.on_result(from_b1("RESULT", task_id=done.id, attempt=1, outcome="exited", rc=0,
                                   duration=1.5, output="all good\n"), 0.2)
    assert [o.kind for o in acks] == ["ACK"]

    again = Controller(store, "build2", clock)  # a restart: everything from the files
    assert {t.id: t.state for t in again.tasks.values()} == {
        done.id: "done", running.id: "running", waiting.id: "queued"}
    assert again.tasks[done.id].result["output"] == "all good\n"
    assert again.queue_depth() == 1
    # the running attempt is probed at once (does b1 still have it?), the queued one goes
    # out in the slot the finished one freed; nothing is sent to run twice
    outs, _ = again.tick(0.0, members, True)
    sent = sorted((o.fields["id"], o.fields.get("probe", False)) for o in outs)
    assert sent == sorted([(running.id, True), (waiting.id, False)])
    # a RESULT the first life acknowledged is acknowledged again, not counted twice
    acks = again.on_result(from_b1("RESULT", task_id=done.id, attempt=1, outcome="exited",
                                   rc=0, duration=1.5), 0.3)
    assert [o.kind for o in acks] == ["ACK"]
    assert again.tasks[done.id].result["output"] == "all good\n"


def test_a_damaged_task_file_is_skipped_and_the_rest_loads(tmp_path, clock):
    store = TaskStore(tmp_path / "queue")
    first = Controller(store, "build2", clock)
    kept = first.submit(["true"], members=[member("b1")])
    (tmp_path / "queue" / "broken.json").write_text("{not json")
    (tmp_path / "queue" / "odd.json").write_text(json.dumps({"id": "../x", "argv": ["a"]}))
    assert list(Controller(store, "build2", clock).tasks) == [kept.id]
    # every file is whole JSON (written atomically): no temporary left behind
    assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == sorted(
        ["broken.json", "odd.json", f"{kept.id}.json"])


# --- the worker ------------------------------------------------------------------------------------

def worker_for(tmp_path, clock, cfg=BUILDER_TASKS, runner=None, has_git=True):
    w = Worker(cfg, tmp_path / "tasks", runner or FakeRunner("b1"), "build3", clock,
               has_git=lambda: has_git)
    w.start(0.0)
    return w


CTL = SimpleNamespace(node_id="node-c", hostname="build2", ip="10.9.0.22", role="controller")


def task_msg(clock, to="node-b1", sender=("node-c", "build2", "10.9.0.22"), **fields):
    fields.setdefault("argv", job("a"))
    fields.setdefault("id", "t1")
    fields.setdefault("attempt", 1)
    return message("TASK", *sender, clock.now, to=to, **fields)


def acks(outs):
    return [(o.kind, o.fields.get("state")) for o in outs]


def test_a_task_is_run_at_most_once_per_attempt_whatever_arrives_twice(tmp_path, clock):
    runner = FakeRunner("b1")
    w = worker_for(tmp_path, clock, runner=runner)
    assert acks(w.on_task(task_msg(clock), "10.9.0.22", CTL, "node-b1", "builder", 0)) == [
        ("ACK", "accepted")]
    clock.now += 0.5  # the controller did not hear the ACK: the same attempt, a new message
    assert acks(w.on_task(task_msg(clock), "10.9.0.22", CTL, "node-b1", "builder", 0.5)) == [
        ("ACK", "running")]
    assert runner.starts == [("t1", 1)]
    # a restarted worker (same files) does not run it again either: a replay after a restart
    w2 = worker_for(tmp_path, clock, runner=runner)
    assert runner.abandoned == [{"kind": "fake", "task": "t1-1"}]
    outs = w2.on_task(task_msg(clock), "10.9.0.22", CTL, "node-b1", "builder", 1.0)
    assert acks(outs) == [("ACK", "finished")]
    assert runner.starts == [("t1", 1)]
    # ... and it tells the controller the attempt was lost with the restart
    results, _ = w2.tick(1.0, {})
    assert [(o.kind, o.fields["outcome"]) for o in results] == [("RESULT", "lost")]
    # a new attempt of the same task is a new run
    w2.on_task(task_msg(clock, attempt=2), "10.9.0.22", CTL, "node-b1", "builder", 1.0)
    assert runner.starts == [("t1", 1), ("t1", 2)]


@pytest.mark.parametrize("case, cfg, role, sender, to, expected", [
    ("from a builder", BUILDER_TASKS, "builder",
     SimpleNamespace(node_id="node-c", hostname="build4", ip="10.9.0.24", role="builder"),
     "node-b1", []),
    ("from a stranger", BUILDER_TASKS, "builder", None, "node-b1", []),
    ("for another node", BUILDER_TASKS, "builder", CTL, "node-b9", []),
    ("tasks off", TasksConfig(), "builder", CTL, "node-b1", [("ACK", "busy")]),
    ("not its role", BUILDER_TASKS, "runner", CTL, "node-b1", [("ACK", "busy")]),
])
def test_refused_tasks_run_nothing(tmp_path, clock, case, cfg, role, sender, to, expected):
    runner = FakeRunner("b1")
    w = worker_for(tmp_path, clock, cfg=cfg, runner=runner)
    outs = w.on_task(task_msg(clock, to=to), "10.9.0.22", sender, "node-b1", role, 0)
    assert acks(outs) == expected
    assert runner.starts == []
    if not cfg.enabled:
        assert "tasks are not enabled on build3" in outs[0].fields["error"]
        assert not (tmp_path / "tasks").exists()  # a node with tasks off writes nothing


def test_no_git_no_slot_and_probes(tmp_path, clock):
    runner = FakeRunner("b1")
    w = worker_for(tmp_path, clock, runner=runner, has_git=False)
    outs = w.on_task(task_msg(clock, repo="https://git.example/app.git"), "10.9.0.22", CTL,
                     "node-b1", "builder", 0)
    assert acks(outs) == [("ACK", "refused")]
    assert outs[0].fields["error"] == ("git is not installed on build3 (apt-get install git) "
                                       "to clone the repo")
    for n, id_ in enumerate(("t2", "t3", "t4")):
        outs = w.on_task(task_msg(clock, id=id_), "10.9.0.22", CTL, "node-b1", "builder", 0)
    assert acks(outs) == [("ACK", "busy")]  # two slots, both taken
    assert runner.starts == [("t2", 1), ("t3", 1)]
    probe = task_msg(clock, id="t9", probe=True)
    assert acks(w.on_task(probe, "10.9.0.22", CTL, "node-b1", "builder", 0)) == [
        ("ACK", "unknown")]
    assert runner.starts == [("t2", 1), ("t3", 1)]  # a probe never starts anything


def test_a_cancel_before_the_task_keeps_it_from_running(tmp_path, clock):
    runner = FakeRunner("b1")
    w = worker_for(tmp_path, clock, runner=runner)
    cancel = message("CANCEL", "node-c", "build2", "10.9.0.22", clock.now, to="node-b1",
                     task_id="t1", attempt=1)
    assert acks(w.on_cancel(cancel, "10.9.0.22", CTL, "node-b1", 0)) == [("ACK", "unknown")]
    clock.now += 0.1
    outs = w.on_task(task_msg(clock), "10.9.0.22", CTL, "node-b1", "builder", 0.1)
    assert acks(outs) == [("ACK", "cancelled")]
    assert runner.starts == []


def test_result_tail_fits_the_datagram_whatever_the_output(tmp_path, clock):
    w = worker_for(tmp_path, clock)
    run = tasks.Run("t1", 1, "node-c", "build2", "10.9.0.22", ["x"], outcome="exited", rc=0,
                    state="ended", duration=1.0, error="é" * 300)
    for blob in (b"\xff\xfe" * 5000, "日本語のテキスト\n".encode() * 2000, b"\x00\x01" * 9000,
                 b"line\n" * 5000):
        run.tail = tasks.tail_text(blob)
        fields = w._result_fields(run)
        payload = protocol.make_payload("RESULT", "x" * 64, "h" * 253, "10.9.0.1", T0, **fields)
        assert len(protocol.encode(payload, SECRET)) <= protocol.MAX_DATAGRAM
    assert tasks.tail_text(b"a\n" * 10) == "a\n" * 10
    assert tasks.tail_text(b"line\n" * 5000).startswith("line\n")  # whole lines


# --- over a lossy network: the agents, the wire, the fake clock ---------------------------------

def make_hive(tmp_path, clock, loss=0.0, dup=0.0, seed=7, workers=2, delay=(0.0005, 0.003),
              slots=2):
    net = Net(clock, seed=seed, loss=loss, dup=dup, delay=delay)
    hive = Hive(tmp_path, net, clock)
    hive.add("build2", "controller", 22, TasksConfig(enabled=True, roles=("builder",)))
    for i in range(workers):
        hive.add(f"build{3 + i}", "builder", 23 + i,
                 TasksConfig(enabled=True, roles=("builder",), slots=slots))
    hive.run(clock.now + 3)  # everyone hears everyone
    return hive


def finished(hive, node) -> bool:
    controller = hive.nodes[node].agent.tasks.controller
    return all(t.state in tasks.FINISHED for t in controller.tasks.values())


def starts(hive) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in hive.nodes.values():
        for task_id, attempt in node.runner.starts:
            out.setdefault(task_id, []).append((node.name, attempt))
    return out


@pytest.mark.parametrize("loss, dup, seed", [(0.0, 0.0, 1), (0.1, 0.05, 2), (0.3, 0.1, 3),
                                             (0.3, 0.1, 4), (0.4, 0.2, 5)])
def test_every_task_runs_once_and_finishes_over_a_lossy_network(tmp_path, clock, loss, dup, seed):
    hive = make_hive(tmp_path, clock, seed=seed, delay=(0.0005, 0.02))
    hive.net.loss, hive.net.dup = loss, dup  # (the hive formed; now the network turns bad)
    ctl = hive.nodes["build2"]
    submitted = {hive.submit(ctl, job(f"j{i}", rc=i % 4, seconds=0.2 + (i % 3) * 0.3),
                             role="builder")["id"]: i % 4 for i in range(30)}
    hive.run(clock.now + 300, stop=lambda: finished(hive, "build2"))
    controller = ctl.agent.tasks.controller
    assert finished(hive, "build2")
    ran = starts(hive)
    assert {task_id: len(runs) for task_id, runs in ran.items()} == {t: 1 for t in submitted}
    for task_id, rc in submitted.items():
        task = controller.tasks[task_id]
        assert task.state == ("done" if rc == 0 else "failed"), task
        assert task.result["rc"] == rc
        assert task.result["worker"] == ran[task_id][0][0]
        assert task.result["output"].startswith(f"j{list(submitted).index(task_id)} ran on ")
    assert {w for runs in ran.values() for w, _ in runs} == {"build3", "build4"}  # spread
    # every RESULT is acknowledged in the end: no worker keeps sending
    hive.run(clock.now + 30, stop=lambda: all(
        r.acked for name in ("build3", "build4")
        for r in hive.nodes[name].agent.tasks.worker.runs.values() if r.state == "ended"))
    for name in ("build3", "build4"):
        worker = hive.nodes[name].agent.tasks.worker
        assert all(r.acked for r in worker.runs.values() if r.state == "ended")
        assert not worker.timers
    if loss:  # it was lossy, and it took retransmissions
        assert hive.net.dropped > 0
        assert hive.net.sent["TASK"] + hive.net.sent["RESULT"] > 60


def test_a_dead_worker_s_tasks_are_rerun_elsewhere_and_reported_once(tmp_path, clock):
    hive = make_hive(tmp_path, clock, loss=0.1, seed=11, slots=4)
    ctl = hive.nodes["build2"]
    ids = [hive.submit(ctl, job(f"long{i}", seconds=20), role="builder")["id"] for i in range(4)]
    hive.run(clock.now + 2)
    ran = starts(hive)
    on_b3 = [t for t in ids if ran.get(t, [("", 0)])[0][0] == "build3"]
    assert len(on_b3) == 2  # spread: the fewest running per slot first
    hive.crash(hive.nodes["build3"])
    killed = clock.now
    hive.run(clock.now + 120, stop=lambda: finished(hive, "build2"))
    controller = ctl.agent.tasks.controller
    ran = starts(hive)
    for task_id in ids:
        task = controller.tasks[task_id]
        assert task.state == "done"
        if task_id in on_b3:
            assert ran[task_id] == [("build3", 1), ("build4", 2)]
            assert [a.state for a in task.attempts] == ["lost", "ended"]
            assert task.result["worker"] == "build4" and task.result["attempt"] == 2
        else:
            assert ran[task_id] == [("build4", 1)]
    # re-sent once the membership probes found it dead (the round under way and three failed
    # ones) plus the task probes (6 x 0.3 s)
    for task_id in on_b3:
        resent = controller.tasks[task_id].attempts[1].sent_at - killed
        assert resent < (timing.PROBE_FAILED_ROUNDS + 1) * timing.PROBE_INTERVAL_DEFAULT \
            + timing.TASK_SUSPECT_PROBES * timing.TASK_RETRY_FIRST + 0.5


def test_no_retries_left_means_lost(tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1)
    ctl = hive.nodes["build2"]
    task_id = hive.submit(ctl, job("once", seconds=30), role="builder", retries=0)["id"]
    hive.run(clock.now + 1)
    hive.crash(hive.nodes["build3"])
    hive.run(clock.now + 60, stop=lambda: finished(hive, "build2"))
    task = ctl.agent.tasks.controller.tasks[task_id]
    assert task.state == "lost"
    assert task.error.startswith("attempt 1 on build3 was lost (build3 stopped answering (it "
                                 "left the hive)), no retries left (0)")
    assert tasks.exit_status(task) == 75


def test_a_controller_restart_loses_no_task(tmp_path, clock):
    hive = make_hive(tmp_path, clock, loss=0.2, seed=5)
    ctl = hive.nodes["build2"]
    ids = [hive.submit(ctl, job(f"j{i}", seconds=1.0 + i % 3), role="builder")["id"]
           for i in range(12)]
    hive.run(clock.now + 2.5)
    hive.crash(ctl)
    hive.run(clock.now + 2)  # results arrive while it is down: the workers keep them
    hive.boot(ctl)
    hive.run(clock.now + 120, stop=lambda: finished(hive, "build2"))
    controller = ctl.agent.tasks.controller
    assert {controller.tasks[i].state for i in ids} == {"done"}
    assert {t: len(r) for t, r in starts(hive).items()} == {t: 1 for t in ids}


def test_a_worker_restart_reports_its_running_attempt_lost_and_the_task_is_requeued(
        tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1)
    ctl, b3 = hive.nodes["build2"], hive.nodes["build3"]
    task_id = hive.submit(ctl, job("x", seconds=5), role="builder")["id"]
    hive.run(clock.now + 1)
    hive.crash(b3)
    hive.boot(b3)  # back at once: the membership never noticed
    hive.run(clock.now + 60, stop=lambda: finished(hive, "build2"))
    task = ctl.agent.tasks.controller.tasks[task_id]
    assert task.state == "done"
    assert [a.state for a in task.attempts] == ["lost", "ended"]
    assert "restarted while it ran" in task.attempts[0].error
    assert b3.runner.abandoned == [{"kind": "fake", "task": f"{task_id}-1"}]


def test_cancel_stops_a_running_task_and_a_queued_one(tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1)
    ctl = hive.nodes["build2"]
    long = hive.submit(ctl, job("long", seconds=100), role="builder")["id"]
    hive.submit(ctl, job("other", seconds=100), role="builder")
    queued = hive.submit(ctl, job("queued", seconds=1), role="builder")["id"]
    hive.run(clock.now + 1)
    assert hive.control(ctl, op="task.cancel", id=queued)["cancel"] == "cancelled"
    assert hive.control(ctl, op="task.cancel", id=long[:6])["cancel"] == "cancelling"
    controller = ctl.agent.tasks.controller
    hive.run(clock.now + 10, stop=lambda: controller.tasks[long].state == "cancelled")
    assert controller.tasks[long].state == "cancelled"
    assert controller.tasks[queued].state == "cancelled" and not controller.tasks[queued].attempts
    assert tasks.exit_status(controller.tasks[long]) == 130


def test_wait_and_logs_through_the_control_requests(tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1, loss=0.2, seed=9)
    ctl = hive.nodes["build2"]
    task_id = hive.submit(ctl, job("w", rc=3, seconds=2), role="builder")["id"]
    waiting = hive.control(ctl, op="task.wait", id=task_id)
    assert isinstance(waiting, Reply) and not waiting.done
    hive.run(clock.now + 30, stop=lambda: waiting.done)
    assert waiting.answer["finished"] and waiting.answer["exit_status"] == 3
    logs = hive.control(ctl, op="task.logs", id=task_id, offset=0)
    hive.run(clock.now + 10, stop=lambda: logs.done)
    import base64
    assert base64.b64decode(logs.answer["data"]).startswith(b"w ran on build3\n")
    assert logs.answer["done"] is True and logs.answer["worker"] == "build3"


def test_the_queue_depth_is_in_the_controller_s_status_and_the_view(tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1)
    ctl, b3 = hive.nodes["build2"], hive.nodes["build3"]
    for i in range(5):
        hive.submit(ctl, job(f"q{i}", seconds=50), role="builder")
    hive.run(clock.now + 2.5)  # two run (two slots), three wait; heartbeats carry it
    assert ctl.agent.tasks.queue_depth() == 3
    seen = b3.agent.membership.members["node-build2"]
    assert seen.queue == 3
    assert seen.view(clock.now)["queue"] == 3
    assert ctl.agent.policy_view(clock.now)["self"]["queue"] == 3
    worker = ctl.agent.membership.members["node-build3"]
    assert worker.capacity["task_slots"] == 2 and worker.capacity["tasks_running"] == 2
    # ... and in peers.json, the view of the advisor's policies and `hive plan`
    from build_agent.membership import view_from_peers
    mine = view_from_peers(json.loads((tmp_path / "build2" / "peers.json").read_text()))
    assert mine["self"]["queue"] == 3
    theirs = view_from_peers(json.loads((tmp_path / "build3" / "peers.json").read_text()))
    assert {p["hostname"]: p["queue"] for p in theirs["peers"]} == {"build2": 3}


def test_a_node_that_is_not_the_controller_refuses_submissions(tmp_path, clock):
    hive = make_hive(tmp_path, clock, workers=1)
    answer = hive.nodes["build3"].agent._control({"op": "task.submit", "argv": ["true"]}, Reply())
    assert answer["error"] == "tasks are not enabled on this node: set [tasks] enabled = true " \
                              "in its hive.toml and restart build-agent" or \
        answer["error"].startswith("this node is 'builder', not a controller: submit tasks on "
                                   "build2 (10.9.0.22)")
