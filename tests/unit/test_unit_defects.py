"""The agent's side of the first release's defects, with a fake clock and a recording socket:
votes tied to members and rounds, a joiner that backs off holds nobody's turn, cloned node
ids, `hive reset --no-restart`, and READY=1 only once signals are handled."""

from __future__ import annotations

import logging
import signal

from build_agent import daemon, protocol, state, timing
from build_agent.membership import Membership
from hive_fakes import SECRET, T0, message
from test_unit_agent import deliver, make_agent, run_until, sent, step  # noqa: F401 (fixture)

EPS = 0.001


def _asking(make_agent, clock, caplog):
    """build5 heard two members (build1, build2) and asks the hive."""
    agent = make_agent()
    caplog.set_level(logging.INFO)
    agent.start(T0)
    step(agent, clock, T0)
    for node, host, ip in (("aaaa-1", "build1", "10.9.0.11"), ("bbbb-2", "build2", "10.9.0.12")):
        deliver(agent, "WELCOME", node, host, ip, T0 + 0.01, to=agent.node_id, role="founder",
                members=2)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask"
    return agent


def _advice(agent, node, host, ip, now, request_id, role="builder"):
    fields = {"request_id": request_id} if request_id else {}
    deliver(agent, "ADVICE", node, host, ip, now, to=agent.node_id, suggested_role=role,
            packages=["git"], config={}, reason="test", **fields)


def test_identify_carries_a_round_id_and_only_this_rounds_advice_counts(make_agent, clock,
                                                                        fake_sock, caplog):
    agent = _asking(make_agent, clock, caplog)
    [identify] = [m for m, _ in sent(fake_sock, "IDENTIFY")][:1]
    round_id = identify.get("request_id")
    assert round_id and protocol.REQUEST_ID_RE.match(round_id)
    _advice(agent, "aaaa-1", "build1", "10.9.0.11", T0 + 0.1, "0ld0ld0ld0ld0ld0", role="runner")
    assert agent.advice == {}  # advice for an abandoned round
    _advice(agent, "aaaa-1", "build1", "10.9.0.11", T0 + 0.11, round_id)
    _advice(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.12, None)  # a reference advisor
    step(agent, clock, T0 + 0.13)
    assert agent.identity["role"] == "builder" and agent.identity["votes"] == {"builder": 2}


def test_advice_from_a_node_that_is_not_a_member_does_not_vote(make_agent, clock, fake_sock,
                                                               caplog):
    agent = _asking(make_agent, clock, caplog)
    round_id = sent(fake_sock, "IDENTIFY")[0][0].get("request_id")
    for i in range(3):  # three strangers (signed, but never members) vote 'runner'
        _advice(agent, f"ffff-{i}", f"stranger{i}", f"10.9.0.{40 + i}", T0 + 0.1, round_id,
                role="runner")
    assert agent.advice == {}
    assert "Ignoring advice from stranger0 (10.9.0.40): not an established member" in caplog.text
    _advice(agent, "aaaa-1", "build1", "10.9.0.11", T0 + 0.2, round_id)
    _advice(agent, "bbbb-2", "build2", "10.9.0.12", T0 + 0.2, round_id)
    step(agent, clock, T0 + 0.21)
    assert agent.identity["role"] == "builder"


def test_a_joiner_nobody_advises_backs_off_saying_so_and_goes_to_the_back(make_agent, clock,
                                                                          fake_sock, caplog):
    agent = _asking(make_agent, clock, caplog)
    since = agent.joining_since
    fake_sock.clear()
    clock.now = T0 + 5
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + timing.ADVICE_TIMEOUT + 2 * EPS)
    assert agent.phase == "backoff"
    [status] = [m for m, _ in sent(fake_sock, "STATUS")]
    assert status.get("state") == "backoff"
    assert agent.joining_since > since  # the end of the queue
    # Even a node that started joining after it does not wait for it while it backs off.
    observer = Membership(10.0)
    observer.observe(status, "10.9.0.2", 100.0)
    assert observer.joiners_ahead((agent.joining_since + 100, "zzzz-9")) == []
    assert [j.node_id for j in observer.joiners.values()] == [agent.node_id]


def _clone_message(agent, started, ip="10.9.0.99", hostname="clone"):
    return message("STATUS", agent.node_id, hostname, ip, T0 + 0.5, role="builder",
                   state="active", interval=10, started=protocol.format_ts(started))


def test_the_younger_of_two_clones_takes_a_fresh_node_id(make_agent, config, clock, caplog):
    caplog.set_level(logging.INFO)
    state.write_node_id(config.node_id_path, "eeee-agent-5")
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS)  # founds
    assert agent.identity["role"] == "founder"
    old = agent.node_id
    # Our own broadcast, echoed back, is not a clone.
    agent.own_id_heard(message("STATUS", old, agent.hostname, agent.iface.address, T0 + 1.6,
                               role="founder"), T0 + 1.6)
    assert agent.node_id == old
    # A machine with our id that has used it longer (started earlier): we are the younger.
    agent.own_id_heard(_clone_message(agent, T0 - 60), T0 + 1.7)
    assert agent.node_id != old
    assert state.read_node_id(config.node_id_path) == agent.node_id
    assert agent.identity["node_id"] == agent.node_id
    assert f"Node id {old} is also used by clone (10.9.0.99)" in caplog.text


def test_the_older_of_two_clones_keeps_its_node_id(make_agent, config, clock, caplog):
    caplog.set_level(logging.INFO)
    agent = make_agent()
    agent.start(T0)
    old = agent.node_id
    agent.own_id_heard(_clone_message(agent, T0 + 30), T0 + 31)
    assert agent.node_id == old
    assert "uses this node's id eeee-agent-5 too" in caplog.text


def test_hive_reset_no_restart_is_not_undone_by_the_running_agent(make_agent, config, clock):
    done = []

    def installer(packages):
        done.append(packages)
        return None

    agent = make_agent(installer=installer, cfg=config.__class__(
        **{**config.__dict__, "install_packages": True}))
    agent.start(T0)
    step(agent, clock, T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS)
    agent.identity["packages"] = ["git"]
    agent.provisioner.request(["git"], clock.now)
    config.identity_path.unlink()  # `hive reset --no-restart`
    for _ in range(100):
        step(agent, clock, clock.now + 0.05)
        agent.provisioner.join(1)
        if done and not agent.provisioner.busy:
            break
    assert done == [["git"]]
    assert not config.identity_path.exists()


def test_ready_is_sent_only_once_the_signal_handlers_are_in_place(monkeypatch, config):
    """systemd may send SIGHUP (reload) as soon as READY=1 arrives: a default handler then would
    kill the daemon, and Restart=on-failure does not bring back a daemon killed by SIGHUP."""
    seen = []

    class Quick(daemon.Service):
        def tick(self, now):
            self.stopping = True
            return now

    def fake_notify(*lines):
        if "READY=1" in lines:
            seen.append(signal.getsignal(signal.SIGHUP))
        return True

    monkeypatch.setattr(daemon, "notify", fake_notify)
    monkeypatch.setattr(daemon, "load_config", lambda path: config)
    monkeypatch.setattr(daemon, "load_secrets", lambda path: [SECRET])
    monkeypatch.setattr("build_agent.netif.find_interface",
                        lambda name: __import__("build_agent.netif").netif.Interface(
                            "veth0", "10.9.0.2", "255.255.255.0", "10.9.0.255"))
    before = signal.getsignal(signal.SIGHUP)
    try:
        assert daemon.main("test", "", [], lambda c, s, i: (Quick(c, s, "n"), [])) == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert len(seen) == 1 and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN, None)
