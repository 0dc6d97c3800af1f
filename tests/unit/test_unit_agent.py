"""The agent's logic without sockets: a fake clock, a recording socket, a tmp state dir."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from build_agent import protocol, state, timing
from build_agent.agent import Agent
from hive_fakes import SECRET, T0, FakeSocket

ME = "eeee-agent-5"
CAPS = {"cpu_cores": 4, "ram_gb": 8.0, "has_gpu": False, "arch": "x86_64", "os": "Ubuntu",
        "docker_installed": False}
BUILDER_PKGS = ["openjdk-17-jdk", "maven", "git", "build-essential"]
EPS = 0.001  # "at" a threshold: within a millisecond of it (float rounding)


def no_install(packages):
    raise AssertionError("the installer must not run in this test")


@pytest.fixture
def make_agent(config, iface, clock, fake_sock):
    def factory(node_id=ME, hostname="build5", installer=no_install, cfg=None) -> Agent:
        agent = Agent(cfg or config, [SECRET], iface, node_id, hostname, capabilities=dict(CAPS),
                      clock=clock, installer=installer)
        agent.attach(fake_sock, fake_sock)
        return agent
    return factory


def deliver(agent: Agent, kind: str, node_id: str, hostname: str, ip: str, now: float,
            **fields) -> protocol.Message:
    """A datagram from a peer through receive() (verify, replay check) into handle()."""
    agent.clock.now = max(agent.clock.now, now)  # the fake clock: time moves on to ``now``
    data = protocol.encode(protocol.make_payload(kind, node_id, hostname, ip, now, **fields),
                           SECRET)
    received = agent.receive(data, (ip, 50555), now)
    assert received is not None
    agent.handle(received, ip, now)
    return received


def step(agent: Agent, clock, now: float) -> float:
    clock.now = now
    return agent.tick(now)


def run_until(agent: Agent, clock, until: float, start: float | None = None) -> float:
    """Tick at every deadline the agent asks for, like the event loop, up to ``until``.

    A deadline of "now" (or a float hair before the threshold it stands for, e.g.
    T0 + 0.3 - T0 < 0.3) is retried a microsecond later, as a real clock would move on.
    """
    now = clock.now if start is None else start
    stalled = 0
    for _ in range(10_000):
        deadline = step(agent, clock, now)
        if deadline > until:
            clock.now = until
            return deadline
        if deadline <= now:
            stalled += 1
            assert stalled < 50, "the agent keeps asking to be woken at the same moment"
            deadline = min(now + 1e-6, until) if now < until else now
            if deadline == now:
                return deadline
        else:
            stalled = 0
        now = deadline
    raise AssertionError("too many wake-ups")


def sent(sock: FakeSocket, kind: str | None = None):
    return [(m, addr) for m, addr in sock.messages() if kind is None or m.kind == kind]


def identity(config) -> dict | None:
    return state.read_identity(config.identity_path)


def advice_fields(role="builder", packages=BUILDER_PKGS, reason="cluster needs builders", **kw):
    return dict(to=ME, suggested_role=role, packages=list(packages), config=kw.pop("config", {}),
                reason=reason, **kw)


# --- a lonely agent founds the hive ------------------------------------------------------------

def test_lonely_agent_founds_after_discovery_max(make_agent, config, clock, fake_sock, caplog):
    agent = make_agent()
    caplog.set_level(logging.INFO)
    agent.start(T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX - 0.001, start=T0)
    assert identity(config) is None
    hellos = sent(fake_sock, "HELLO")
    assert len(hellos) == len(timing.HELLO_SCHEDULE)
    assert all(addr == ("10.9.0.255", 50555) for _, addr in hellos)
    first = hellos[0][0]
    assert first.get("joining_since") == protocol.format_ts(T0)
    assert first.get("capabilities") == CAPS and first.primary_ip == "10.9.0.2"
    assert not sent(fake_sock, "IDENTIFY")

    run_until(agent, clock, T0 + timing.DISCOVERY_MAX)
    ident = identity(config)
    assert ident is not None
    assert ident["role"] == "founder"
    assert ident["assigned_by"] == ["self"]
    assert ident["packages"] == [] and ident["config"] == {}
    assert ident["assigned_at"] == protocol.format_ts_seconds(T0 + timing.DISCOVERY_MAX)
    assert ident["assigned_at"].endswith("Z")
    assert "No peers found; this may be the first node (founder role)." in caplog.text
    assert agent.phase == "operate" and agent.role == "founder"
    # It announces its role at once and keeps peers.json.
    statuses = [m for m, _ in sent(fake_sock, "STATUS") if m.get("role") == "founder"]
    assert statuses and statuses[-1].get("state") == "active"
    peers = json.loads(config.peers_path.read_text())
    assert peers["self"]["role"] == "founder" and peers["peers"] == []
    assert peers["self"]["hostname"] == "build5" and peers["self"]["primary_ip"] == "10.9.0.2"


def test_agent_with_identity_keeps_it_and_does_not_ask(make_agent, config, clock, fake_sock,
                                                       caplog):
    state.write_json_atomic(config.identity_path, {
        "role": "runner", "packages": [], "config": {}, "assigned_by": ["build1"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": True})
    agent = make_agent()
    caplog.set_level(logging.INFO)
    run_until(agent, clock, T0 + 10, start=T0)
    assert "Already identified as: runner" in caplog.text
    assert agent.role == "runner"
    assert not sent(fake_sock, "IDENTIFY")
    hello = sent(fake_sock, "HELLO")[0][0]
    assert hello.get("role") == "runner"
    assert identity(config)["assigned_by"] == ["build1"]


# --- joining an established hive -----------------------------------------------------------------

def test_joins_with_majority_as_soon_as_every_member_advised(make_agent, config, clock, fake_sock,
                                                              caplog):
    agent = make_agent()
    caplog.set_level(logging.INFO)
    agent.start(T0)
    step(agent, clock, T0)
    for node, host, ip, role in (("aaaa-1", "build1", "10.9.0.11", "founder"),
                                 ("bbbb-2", "build2", "10.9.0.12", "controller")):
        deliver(agent, "WELCOME", node, host, ip, T0 + 0.01, to=ME, role=role, members=2)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask"
    assert "Discovered 2 peer(s)" in caplog.text
    assert "Asking peers for role assignment..." in caplog.text
    [(identify, address)] = sent(fake_sock, "IDENTIFY")
    assert address == ("10.9.0.255", 50555)
    assert identify.get("request") == "who_am_i" and identify.get("capabilities") == CAPS

    deliver(agent, "ADVICE", "bbbb-2", "build2", "10.9.0.12", T0 + 0.35,
            **advice_fields(packages=["maven", "git", "ant"], config={"jobs": 2}))
    step(agent, clock, T0 + 0.35)
    assert identity(config) is None  # one of two advised: keep waiting
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.4,
            **advice_fields(config={"jobs": 1}))
    step(agent, clock, T0 + 0.4)
    ident = identity(config)
    assert ident is not None, "must settle as soon as both advised"
    assert T0 + 0.4 < T0 + timing.DISCOVERY_MIN + timing.ADVICE_TIMEOUT
    assert ident["role"] == "builder"
    assert ident["assigned_by"] == ["build1", "build2"]
    assert ident["packages"] == BUILDER_PKGS + ["ant"]
    assert ident["config"] == {"jobs": 1}
    assert ident["assigned_at"] == "2026-11-26T12:00:00Z"
    assert " <- build2: become 'builder' (cluster needs builders)" in caplog.text
    assert " <- build1: become 'builder' (cluster needs builders)" in caplog.text
    assert "Consensus: I am a 'builder'" in caplog.text
    assert "Packages: openjdk-17-jdk, maven, git, build-essential, ant" in caplog.text
    peers = json.loads(config.peers_path.read_text())
    assert peers["self"]["role"] == "builder"
    assert sorted(p["hostname"] for p in peers["peers"]) == ["build1", "build2"]


def test_retransmitted_advice_counts_once(make_agent, config, clock, fake_sock):
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    members = [("aaaa-1", "build1", "10.9.0.11"), ("bbbb-2", "build2", "10.9.0.12"),
               ("cccc-3", "build3", "10.9.0.13")]
    for node, host, ip in members:
        deliver(agent, "WELCOME", node, host, ip, T0 + 0.01, to=ME, role="builder", members=3)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask" and agent.expected_advisors == 3
    # build3 says runner three times (retransmissions with fresh timestamps) ...
    for i in range(3):
        deliver(agent, "ADVICE", "cccc-3", "build3", "10.9.0.13", T0 + 0.31 + i * 0.01,
                **advice_fields(role="runner", packages=["npm"], reason="have builders"))
        step(agent, clock, T0 + 0.31 + i * 0.01)
    assert identity(config) is None and len(agent.advice) == 1
    # ... and the two others say builder: builder wins 2 to 1.
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.4, **advice_fields())
    step(agent, clock, T0 + 0.4)
    assert identity(config) is None
    deliver(agent, "ADVICE", "bbbb-2", "build2", "10.9.0.12", T0 + 0.41, **advice_fields())
    step(agent, clock, T0 + 0.41)
    ident = identity(config)
    assert ident["role"] == "builder"
    assert ident["votes"] == {"builder": 2, "runner": 1}
    assert ident["assigned_by"] == ["build1", "build2"]


def test_advice_for_another_node_or_outside_asking_is_ignored(make_agent, config, clock):
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    # Before asking: ignored.
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01,
            **advice_fields(role="runner"))
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.02, to=ME,
            role="founder", members=1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask" and agent.advice == {}
    # Addressed to somebody else: ignored.
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.35,
            **{**advice_fields(role="runner"), "to": "someone-else"})
    step(agent, clock, T0 + 0.35)
    assert identity(config) is None
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.4,
            **advice_fields(role="controller", packages=["ansible", "git"]))
    step(agent, clock, T0 + 0.4)
    assert identity(config)["role"] == "controller"


def test_missing_advisor_times_out_and_the_others_decide(make_agent, config, clock, caplog):
    agent = make_agent()
    caplog.set_level(logging.INFO)
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME, role="founder",
            members=2)
    deliver(agent, "WELCOME", "bbbb-2", "build2", "10.9.0.12", T0 + 0.01, to=ME,
            role="controller", members=2)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    ask_start = clock.now
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.35, **advice_fields())
    run_until(agent, clock, ask_start + timing.ADVICE_TIMEOUT - 0.01)
    assert identity(config) is None
    assert len(sent(agent.unicast_sock, "IDENTIFY")) == len(timing.IDENTIFY_SCHEDULE)
    run_until(agent, clock, ask_start + timing.ADVICE_TIMEOUT + EPS)
    assert identity(config)["role"] == "builder"
    assert "Only 1 of 2 peer(s) advised" in caplog.text


def test_no_advice_backs_off_and_asks_again(make_agent, config, clock, fake_sock):
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME, role="founder",
            members=1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + timing.ADVICE_TIMEOUT + 0.01)
    assert agent.phase == "backoff" and identity(config) is None
    # The member keeps heartbeating; after the backoff the agent discovers and asks again,
    # and it never founds a second hive.
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", clock.now, role="founder",
            interval=10)
    hellos_before = len(sent(fake_sock, "HELLO"))
    identifies_before = len(sent(fake_sock, "IDENTIFY"))
    assert identifies_before == len(timing.IDENTIFY_SCHEDULE)
    assert agent.reask_backoff == 2 * timing.REASK_BACKOFF_FIRST  # the next pause doubles
    run_until(agent, clock, clock.now + timing.REASK_BACKOFF_FIRST - 0.1)
    assert len(sent(fake_sock, "HELLO")) == hellos_before  # quiet during the backoff
    run_until(agent, clock, clock.now + 1.0)
    assert len(sent(fake_sock, "HELLO")) > hellos_before
    assert agent.phase == "ask"
    assert len(sent(fake_sock, "IDENTIFY")) > identifies_before
    assert identity(config) is None  # never founds a second hive


# --- waiting for joiners ahead ---------------------------------------------------------------------

def _join_behind_a_joiner(make_agent, clock, fake_sock, caplog):
    agent = make_agent()
    caplog.set_level(logging.INFO)
    clock.now = T0 + 1  # our start, by the wall clock that stamps joining_since
    agent.start(T0 + 1)
    step(agent, clock, T0 + 1)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 1.01, to=ME, role="founder",
            members=1)
    # Another node started joining a second earlier (its HELLO carries joining_since).
    deliver(agent, "HELLO", "ffff-9", "build9", "10.9.0.19", T0 + 1.02,
            joining_since=protocol.format_ts(T0), role=None)
    run_until(agent, clock, T0 + 1 + timing.DISCOVERY_MAX + 0.5)
    assert agent.phase == "wait"
    assert "Waiting for 1 joining node(s) ahead of me: build9" in caplog.text
    assert not sent(fake_sock, "IDENTIFY")
    return agent


def test_agent_waits_for_a_joiner_ahead_then_asks(make_agent, config, clock, fake_sock, caplog):
    agent = _join_behind_a_joiner(make_agent, clock, fake_sock, caplog)
    # The joiner ahead keeps announcing itself: still waiting.
    now = clock.now
    for i in range(1, 4):
        deliver(agent, "STATUS", "ffff-9", "build9", "10.9.0.19", now + i, role=None,
                state="joining", joining_since=protocol.format_ts(T0))
        run_until(agent, clock, now + i + 0.1)
    assert agent.phase == "wait" and not sent(fake_sock, "IDENTIFY")
    # It settles as controller: now it is our turn, with two established members.
    deliver(agent, "STATUS", "ffff-9", "build9", "10.9.0.19", now + 4, role="controller",
            state="active", interval=10)
    run_until(agent, clock, now + 4.05)
    assert agent.phase == "ask" and agent.expected_advisors == 2
    assert len(sent(fake_sock, "IDENTIFY")) == 1
    assert identity(config) is None


def test_agent_stops_waiting_for_a_silent_joiner(make_agent, config, clock, fake_sock, caplog):
    agent = _join_behind_a_joiner(make_agent, clock, fake_sock, caplog)
    heard = T0 + 1.02
    run_until(agent, clock, heard + timing.JOINING_PEER_TIMEOUT - 0.01)
    assert agent.phase == "wait"
    run_until(agent, clock, heard + timing.JOINING_PEER_TIMEOUT + timing.JOINING_KEEPALIVE)
    assert agent.phase == "ask" and agent.expected_advisors == 1


def test_a_joiner_behind_does_not_block(make_agent, config, clock, fake_sock):
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME, role="founder",
            members=1)
    deliver(agent, "HELLO", "0000-later", "build8", "10.9.0.18", T0 + 0.02,
            joining_since=protocol.format_ts(T0 + 0.01))
    # Same start, higher node id: also behind us.
    deliver(agent, "HELLO", "zzzz-same", "build7", "10.9.0.17", T0 + 0.02,
            joining_since=protocol.format_ts(T0))
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask"


def test_simultaneous_cold_start_lowest_id_founds(make_agent, config, clock, fake_sock):
    agent = make_agent(node_id="bbbb-late")
    agent.start(T0)
    step(agent, clock, T0)
    # Another node starting at the same moment with a lower id: it goes first.
    deliver(agent, "HELLO", "aaaa-first", "build1", "10.9.0.11", T0 + 0.01,
            joining_since=protocol.format_ts(T0))
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + 0.5)
    assert agent.phase == "wait" and identity(config) is None
    deliver(agent, "STATUS", "aaaa-first", "build1", "10.9.0.11", T0 + 1.6, role="founder",
            interval=10)
    run_until(agent, clock, T0 + 2.7)
    assert agent.phase == "ask" and identity(config) is None


# --- answering others -----------------------------------------------------------------------------

def test_member_answers_hello_with_welcome(make_agent, config, clock, fake_sock):
    state.write_json_atomic(config.identity_path, {
        "role": "founder", "packages": [], "config": {}, "assigned_by": ["self"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": True})
    agent = make_agent()
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", T0, role="controller")
    fake_sock.clear()
    deliver(agent, "HELLO", "nnnn-new", "build9", "10.9.0.19", T0 + 0.1,
            joining_since=protocol.format_ts(T0 + 0.1))
    [(welcome, address)] = sent(fake_sock, "WELCOME")
    assert address == ("10.9.0.19", 50555)
    assert welcome.get("to") == "nnnn-new"
    assert welcome.get("role") == "founder"
    assert welcome.get("members") == 2  # itself and build1; the newcomer is not a member
    assert welcome.get("joining_since") is None


def test_shutdown_says_goodbye(make_agent, clock, fake_sock):
    agent = make_agent()
    agent.start(T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX, start=T0)
    fake_sock.clear()
    agent.shutdown()
    leaving = [m for m, _ in sent(fake_sock, "STATUS") if m.get("state") == "leaving"]
    assert len(leaving) == 2
    assert leaving[0].get("role") == "founder"


def test_peers_json_drops_a_dead_member(make_agent, config, clock, fake_sock):
    agent = make_agent()
    agent.start(T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX, start=T0)  # founder
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", T0 + 2, role="builder", interval=1)
    step(agent, clock, T0 + 2)
    assert [p["hostname"] for p in json.loads(config.peers_path.read_text())["peers"]] == \
        ["build1"]
    run_until(agent, clock, T0 + 2 + 3 * 1 - 0.01)
    assert len(json.loads(config.peers_path.read_text())["peers"]) == 1
    run_until(agent, clock, T0 + 2 + 3 * 1 + 0.01)
    assert json.loads(config.peers_path.read_text())["peers"] == []


# --- provisioning after identity -------------------------------------------------------------------

def _founded_then_told_packages(make_agent, cfg, clock, installer):
    state.write_json_atomic(cfg.identity_path, {
        "role": "builder", "packages": ["git", "maven"], "config": {}, "assigned_by": ["build1"],
        "assigned_at": "2026-11-25T10:00:00Z", "provisioned": False})
    agent = make_agent(installer=installer, cfg=cfg)
    agent.start(T0)
    step(agent, clock, T0)
    agent.provisioner.join(5)
    step(agent, clock, T0 + 1)
    return agent


def test_provisioning_success_is_recorded(make_agent, config, clock):
    calls = []
    cfg = replace(config, install_packages=True)
    _founded_then_told_packages(make_agent, cfg, clock,
                                lambda packages: calls.append(list(packages)))
    assert calls == [["git", "maven"]]
    ident = identity(cfg)
    assert ident["provisioned"] is True and ident["provision_error"] is None


def test_provisioning_failure_is_recorded_and_retried(make_agent, config, clock, caplog):
    calls = []

    def failing(packages):
        calls.append(list(packages))
        return "apt-get install failed (exit 100): E: Unable to locate package maven"
    cfg = replace(config, install_packages=True)
    agent = _founded_then_told_packages(make_agent, cfg, clock, failing)
    ident = identity(cfg)
    assert ident["provisioned"] is False
    assert "Unable to locate package maven" in ident["provision_error"]
    assert "Installing packages failed" in caplog.text
    assert len(calls) == 1
    step(agent, clock, T0 + 1 + timing.PROVISION_RETRY - 1)
    assert len(calls) == 1
    step(agent, clock, T0 + 1 + timing.PROVISION_RETRY)
    agent.provisioner.join(5)
    assert len(calls) == 2


def test_install_packages_false_skips_installing(make_agent, config, clock, caplog):
    caplog.set_level(logging.INFO)
    _founded_then_told_packages(make_agent, config, clock, no_install)
    assert "install_packages = false: not installing git, maven" in caplog.text
    assert identity(config)["provisioned"] is False


def test_an_exception_while_installing_is_recorded_and_retried(make_agent, config, clock, caplog):
    """Undecodable apt output (or any bug) in the worker: the agent keeps running, records the
    error in identity.json and tries again after PROVISION_RETRY."""
    calls = []

    def raising(packages):
        calls.append(list(packages))
        b"\xff".decode("utf-8")
    cfg = replace(config, install_packages=True)
    agent = _founded_then_told_packages(make_agent, cfg, clock, raising)
    ident = identity(cfg)
    assert ident["provisioned"] is False
    assert ident["provision_error"].startswith("internal error: UnicodeDecodeError")
    assert ident["provisioned_at"]
    assert "Installing packages failed: internal error: UnicodeDecodeError" in caplog.text
    # the agent goes on: heartbeats say the provisioning failed, and it retries
    agent.unicast_sock.clear()
    step(agent, clock, T0 + 1 + timing.PROVISION_RETRY)
    agent.provisioner.join(5)
    step(agent, clock, T0 + 2 + timing.PROVISION_RETRY)
    assert len(calls) == 2
    statuses = [m for m, _ in agent.unicast_sock.messages() if m.kind == "STATUS"]
    assert statuses and all(m.get("health") == "provisioning-failed" for m in statuses)
    assert identity(cfg)["provision_error"].startswith("internal error: UnicodeDecodeError")


def test_installing_later_succeeds_after_an_exception(make_agent, config, clock):
    results = [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), None]

    def flaky(packages):
        outcome = results.pop(0)
        if outcome is not None:
            raise outcome
    cfg = replace(config, install_packages=True)
    agent = _founded_then_told_packages(make_agent, cfg, clock, flaky)
    assert identity(cfg)["provisioned"] is False
    step(agent, clock, T0 + 1 + timing.PROVISION_RETRY)
    agent.provisioner.join(5)
    step(agent, clock, T0 + 2 + timing.PROVISION_RETRY)
    ident = identity(cfg)
    assert ident["provisioned"] is True and ident["provision_error"] is None
