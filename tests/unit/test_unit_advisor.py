"""The advisor's logic and Service.receive/send, without sockets."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from build_advisor.advisor import Advisor, start_thread
from build_advisor import policy as policy_mod
from build_advisor.policy import default_suggest_role, load_policy
from build_agent import protocol, state, timing
from build_agent.agent import Agent
from build_agent.daemon import Service
from hive_fakes import SECRET, T0, FakeSocket, policy_copy, through_relay

SELF_ID = "self-node-0"
NEW_ID = "new-node-9"
IDENTITY = {"role": "founder", "packages": [], "config": {}, "assigned_by": ["self"],
            "assigned_at": "2026-11-26T11:00:00Z"}


class RecordingPolicy:
    def __init__(self, wrapped=default_suggest_role):
        self.calls: list[tuple[dict, dict]] = []
        self.wrapped = wrapped

    def __call__(self, view, newcomer):
        self.calls.append((view, newcomer))
        return self.wrapped(view, newcomer)


def run_now(work):
    """spawn= for tests: the policy call runs at once, in this thread."""
    work()


class HeldCalls:
    """spawn= for tests: policy calls wait here until the test runs them (a slow policy)."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, work) -> None:
        self.calls.append(work)

    def finish(self, index: int = 0) -> None:
        self.calls.pop(index)()


def peer_entry(i: int, role: str = "builder", **extra) -> dict:
    return {"node_id": f"member-{i}", "hostname": f"build{i}", "ip": f"10.9.0.{10 + i}",
            "role": role, "last_seen": protocol.format_ts_seconds(T0), "interval": 10,
            "joined_at": protocol.format_ts_seconds(T0 - 1000 + i),
            "role_since": protocol.format_ts_seconds(T0 - 1000 + i), **extra}


def write_peers(config, peers: list[dict], self_role: str | None = "founder",
                requests: dict | None = None) -> None:
    """The agent's peers.json: the advisor's one view of the hive."""
    me = {"hostname": "build0", "primary_ip": "10.9.0.2", "node_id": SELF_ID, "role": self_role,
          "status": "active" if self_role else "joining"}
    if self_role:
        me.update(joined_at=IDENTITY["assigned_at"], role_since=IDENTITY["assigned_at"])
    state.write_json_atomic(config.peers_path, {"self": me, "peers": peers,
                                                "requests": requests or {}})


@pytest.fixture
def make_advisor(config, iface, clock, fake_sock):
    def factory(policy=default_suggest_role, with_identity=True, with_node_id=True,
                spawn=run_now) -> Advisor:
        if with_node_id:
            write_peers(config, [], "founder" if with_identity else None)
        advisor = Advisor(config, [SECRET], iface, "build0", policy, clock=clock, steady=clock,
                          spawn=spawn)
        advisor.attach(fake_sock)
        advisor.tick(T0)
        return advisor
    return factory


def feed(service: Service, kind: str, node_id: str, hostname: str, ip: str, now: float,
         **fields) -> protocol.Message | None:
    """Through receive() and, when it passes, handle().  An advisor gets it as its agent hands
    it over (on the loopback socket), having heard it from ``ip``."""
    data = protocol.encode(protocol.make_payload(kind, node_id, hostname, ip, now, **fields),
                           SECRET)
    source = (ip, 50555)
    if isinstance(service, Advisor):
        data, source = through_relay(data, ip)
    message = service.receive(data, source, now)
    if message is not None:
        service.handle(message, source[0], now)
    return message


def identify(service: Service, now: float = T0 + 1, node_id: str = NEW_ID, ip="10.9.0.99",
             **caps):
    return feed(service, "IDENTIFY", node_id, "build9", ip, now, request="who_am_i",
                candidate_ip=None, capabilities={"has_gpu": False, **caps}, attempt=0)


def advices(sock: FakeSocket):
    return [(m, addr) for m, addr in sock.messages() if m.kind == "ADVICE"]


def add_members(advisor: Advisor, count: int, now: float = T0) -> None:
    """Members as the agent knows them: in its peers.json."""
    write_peers(advisor.config, [peer_entry(i) for i in range(1, count + 1)])


# --- advising -------------------------------------------------------------------------------------

def test_advises_a_newcomer(make_advisor, fake_sock, caplog):
    advisor = make_advisor()
    caplog.set_level(logging.INFO)
    identify(advisor)
    [(advice, address)] = advices(fake_sock)
    assert address == ("10.9.0.99", 50555)
    assert advice.node_id == SELF_ID and advice.hostname == "build0"
    assert advice.primary_ip == "10.9.0.2"
    assert advice.get("to") == NEW_ID
    assert advice.get("suggested_role") == "controller"
    assert advice.get("packages") == ["ansible", "git"]
    assert advice.get("config") == {}
    assert advice.get("reason") == "first node becomes controller"
    assert advisor.advised == 1
    assert " -> build9: become 'controller'" in caplog.text


@pytest.mark.parametrize("others, role", [(0, "controller"), (1, "builder"), (2, "builder"),
                                           (3, "runner"), (6, "runner")])
def test_default_policy_by_number_of_peers(make_advisor, fake_sock, others, role):
    advisor = make_advisor()
    add_members(advisor, others)
    identify(advisor)
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == role


def test_no_advice_without_identity(make_advisor, config, fake_sock):
    advisor = make_advisor(with_identity=False)
    write_peers(config, [peer_entry(1), peer_entry(2)], self_role=None)  # the agent is joining
    identify(advisor)
    assert advices(fake_sock) == [] and advisor.advised == 0
    # Once the local agent has an identity (its peers.json says so), it advises.
    write_peers(config, [peer_entry(1), peer_entry(2)])
    identify(advisor, now=T0 + 2)
    assert len(advices(fake_sock)) == 1


@pytest.mark.parametrize("text", ['{"self": {"role": "builder"}', "[]", '{"peers": []}'])
def test_no_advice_with_a_broken_peers_file(make_advisor, config, fake_sock, text):
    advisor = make_advisor(with_identity=False, with_node_id=False)
    config.peers_path.write_text(text)
    identify(advisor)
    assert advices(fake_sock) == []


def test_never_advises_itself(make_advisor, fake_sock):
    advisor = make_advisor()
    # Through the socket path its own datagrams are dropped ...
    assert identify(advisor, node_id=SELF_ID, ip="10.9.0.2") is None
    # ... and even handed over directly it does not answer itself.
    message = protocol.decode(protocol.encode(protocol.make_payload(
        "IDENTIFY", SELF_ID, "build0", "10.9.0.2", T0 + 1, request="who_am_i"), SECRET),
        [SECRET], T0 + 1)
    advisor.handle(message, "10.9.0.2", T0 + 1)
    assert advices(fake_sock) == []


def test_picks_up_its_node_id_once_the_agent_wrote_it(make_advisor, config, fake_sock, clock):
    advisor = make_advisor(with_node_id=False)
    assert advisor.node_id is None
    assert advisor.tick(T0) <= T0 + 1.0  # polls for the node id
    write_peers(config, [])
    advisor.tick(T0 + 1)
    assert advisor.node_id == SELF_ID
    identify(advisor, node_id=SELF_ID, ip="10.9.0.2")
    assert advices(fake_sock) == []


def test_the_view_is_the_agents_peers_json_without_itself_or_the_newcomer(make_advisor, config,
                                                                         fake_sock):
    policy = RecordingPolicy()
    advisor = make_advisor(policy=policy)
    # A member only this advisor's socket heard counts for nothing: the agent's view is the view.
    feed(advisor, "STATUS", "member-7", "build7", "10.9.0.17", T0, role="builder", interval=10)
    # The newcomer was a member before its identity was reset; the agent's peers.json still
    # lists it next to three members.
    write_peers(config, [peer_entry(1), peer_entry(2), peer_entry(3, capabilities={"has_gpu": True}),
                         {**peer_entry(9, "runner"), "node_id": NEW_ID}])
    identify(advisor)
    [(view, newcomer)] = policy.calls
    assert sorted(p["hostname"] for p in view["peers"]) == ["build1", "build2", "build3"]
    assert view["self"]["node_id"] == SELF_ID and view["self"]["role"] == "founder"
    assert view["members"] == [view["self"]] + view["peers"]
    assert view["peers"][2]["capabilities"] == {"has_gpu": True}
    assert newcomer == {"node_id": NEW_ID, "hostname": "build9", "ip": "10.9.0.99",
                        "capabilities": {"has_gpu": False}}
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "runner"  # 3 peers


def test_an_identify_is_answered_once_the_agent_has_heard_it(make_advisor, config, fake_sock,
                                                            clock):
    """A joiner that settled just ahead must be in the view: the advisor waits (bounded) until
    peers.json shows the newcomer's request, i.e. the agent has heard all before it."""
    advisor = make_advisor()
    write_peers(config, [peer_entry(1)])
    feed(advisor, "IDENTIFY", NEW_ID, "build9", "10.9.0.99", T0 + 1, request="who_am_i",
         request_id="r1")
    assert advices(fake_sock) == []
    assert advisor.tick(T0 + 1.001) == pytest.approx(T0 + 1.001 + timing.VIEW_SYNC_POLL)
    write_peers(config, [peer_entry(1), peer_entry(2)], requests={NEW_ID: "r1"})
    advisor.tick(T0 + 1.02)
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "builder" and advice.get("request_id") == "r1"
    # ... and if the agent never shows it, at most VIEW_SYNC_TIMEOUT later.
    feed(advisor, "IDENTIFY", "other-9", "build8", "10.9.0.98", T0 + 2, request="who_am_i",
         request_id="r2")
    advisor.tick(T0 + 2 + timing.VIEW_SYNC_TIMEOUT - 0.01)
    assert len(advices(fake_sock)) == 1
    advisor.tick(T0 + 2 + timing.VIEW_SYNC_TIMEOUT)
    assert len(advices(fake_sock)) == 2


def test_failing_policy_falls_back_to_the_default(make_advisor, fake_sock, caplog):
    def broken(view, newcomer):
        raise RuntimeError("policy bug")
    advisor = make_advisor(policy=broken)
    add_members(advisor, 1)
    with caplog.at_level(logging.ERROR):
        identify(advisor)
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "builder"
    assert "RuntimeError" in caplog.text


def test_policy_sees_newcomer_capabilities(make_advisor, fake_sock, tmp_path):
    gpu = load_policy(policy_copy(Path(policy_mod.__file__).parent / "policies" / "gpu_aware.py",
                                  tmp_path))
    advisor = make_advisor(policy=gpu)
    identify(advisor, has_gpu=True, cpu_cores=16)
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "ml-trainer"


# --- a user's policy: checked as receivers will, off the loop, with a deadline ---------------------

@pytest.mark.parametrize("answer", [
    {"role": "builder", "config": {"tags": {"gpu"}}},             # a set: send() used to raise
    {"role": "builder", "config": {"ratio": float("nan")}},       # NaN: receivers drop it
    {"role": "builder", "config": {"blob": "x" * 5000}},          # config too large
    {"role": "builder", "packages": [f"pkg{i}" for i in range(65)]},
    {"role": "builder", "packages": ["p" + "x" * 127] * 64},      # datagram too large
])
def test_an_answer_receivers_would_drop_gets_the_default(make_advisor, fake_sock, caplog, answer):
    advisor = make_advisor(policy=lambda view, newcomer: answer)
    with caplog.at_level(logging.INFO):
        identify(advisor)
    [(advice, address)] = advices(fake_sock)  # decoded as a receiver does
    assert address == ("10.9.0.99", 50555)
    assert advice.get("suggested_role") == "controller" and advice.get("to") == NEW_ID
    assert advice.get("config") == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("Policy failed for build9 (invalid answer")
    assert " -> build9: become 'controller' (first node becomes controller)" in caplog.text


def test_a_slow_policy_is_answered_by_the_default_at_its_deadline(make_advisor, fake_sock,
                                                                  caplog, clock):
    held = HeldCalls()
    policy = RecordingPolicy(lambda view, newcomer: {"role": "late", "reason": "slow"})
    advisor = make_advisor(policy=policy, spawn=held)
    add_members(advisor, 1)
    with caplog.at_level(logging.INFO):
        identify(advisor, now=T0 + 1)
        assert advices(fake_sock) == [] and len(held.calls) == 1
        # The loop's next wake-up is the deadline; nothing is sent before it.
        assert advisor.tick(T0 + 1.5) == T0 + 1 + timing.POLICY_TIMEOUT
        assert advices(fake_sock) == []
        advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)
        [(advice, _)] = advices(fake_sock)
        assert advice.get("suggested_role") == "builder"  # the default, for 1 peer
        assert (f"Policy failed for build9 (no answer within {timing.POLICY_TIMEOUT:g} s); "
                f"using the default policy") in caplog.text
        # The policy answers at last, 30 s after it was asked: dropped, said once.
        clock.now = T0 + 31
        held.finish()
    assert len(policy.calls) == 1 and len(advices(fake_sock)) == 1
    assert ("Policy call for build9 returned after 30.0 s, too late: the default policy had "
            "answered" in caplog.text)
    assert advisor.advised == 1 and advisor._calls == 0


def test_a_policy_that_answers_in_time_is_sent_once(make_advisor, fake_sock):
    held = HeldCalls()
    advisor = make_advisor(policy=lambda view, newcomer: {"role": "tester", "reason": "mine"},
                           spawn=held)
    identify(advisor, now=T0 + 1)
    # Asked again (the agent's retries) while the call runs: no second call.
    identify(advisor, now=T0 + 1.4, **{"cpu_cores": 2})
    assert len(held.calls) == 1
    held.finish()
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "tester"
    assert advisor.tick(T0 + 5) == float("inf")  # nothing left to answer
    assert len(advices(fake_sock)) == 1


def test_a_slow_newcomer_does_not_delay_the_next(make_advisor, fake_sock):
    held = HeldCalls()

    def policy(view, newcomer):
        return {"role": "tester", "reason": f"for {newcomer['hostname']}"}
    advisor = make_advisor(policy=policy, spawn=held)
    feed(advisor, "IDENTIFY", "slow-node", "build7", "10.9.0.77", T0 + 1, request="who_am_i")
    feed(advisor, "IDENTIFY", "quick-node", "build8", "10.9.0.88", T0 + 1.2, request="who_am_i")
    held.finish(1)  # the second newcomer's call returns first
    [(advice, address)] = advices(fake_sock)
    assert advice.get("to") == "quick-node" and address[0] == "10.9.0.88"
    advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)  # the first one's deadline: the default
    assert [(m.get("to"), m.get("suggested_role")) for m, _ in advices(fake_sock)] == [
        ("quick-node", "tester"), ("slow-node", "controller")]


def test_policy_calls_in_flight_are_bounded(make_advisor, fake_sock, caplog):
    held = HeldCalls()
    advisor = make_advisor(policy=lambda view, newcomer: {"role": "tester"}, spawn=held)
    from build_advisor.advisor import MAX_POLICY_CALLS
    for i in range(MAX_POLICY_CALLS):
        feed(advisor, "IDENTIFY", f"node-{i}", f"build{20 + i}", f"10.9.0.{20 + i}", T0 + 1,
             request="who_am_i")
    # Their deadlines pass: the default answers them, but their calls still run (hung).
    advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)
    assert len(advices(fake_sock)) == MAX_POLICY_CALLS and len(held.calls) == MAX_POLICY_CALLS
    with caplog.at_level(logging.ERROR):
        feed(advisor, "IDENTIFY", "one-more", "build30", "10.9.0.30", T0 + 3, request="who_am_i")
    # No fifth call: the default answers at once.
    assert len(held.calls) == MAX_POLICY_CALLS
    assert advices(fake_sock)[-1][0].get("to") == "one-more"
    assert (f"Policy failed for build30 ({MAX_POLICY_CALLS} earlier policy calls are still "
            f"running); using the default policy") in caplog.text
    # One hung call returns: its slot is free again.
    held.finish()
    feed(advisor, "IDENTIFY", "later", "build31", "10.9.0.31", T0 + 4, request="who_am_i")
    assert len(held.calls) == MAX_POLICY_CALLS
    held.finish(-1)
    assert advices(fake_sock)[-1][0].get("to") == "later"
    assert advices(fake_sock)[-1][0].get("suggested_role") == "tester"


def test_the_policy_gets_copies_it_may_change(make_advisor, fake_sock):
    def rude(view, newcomer):
        view["peers"].clear()
        newcomer["hostname"] = "changed"
        raise RuntimeError("after changing things")
    advisor = make_advisor(policy=rude)
    add_members(advisor, 3)
    identify(advisor)
    [(advice, _)] = advices(fake_sock)
    assert advice.get("suggested_role") == "runner"  # the default saw all 3 peers


def test_a_real_thread_keeps_the_caller_free(make_advisor, fake_sock, caplog):
    """With the real spawn: handle() returns at once while the policy blocks."""
    release = threading.Event()
    entered = threading.Event()

    def blocking(view, newcomer):
        entered.set()
        release.wait(30)
        return {"role": "late"}
    advisor = make_advisor(policy=blocking, spawn=start_thread)
    started = time.monotonic()
    identify(advisor, now=T0 + 1)
    took = time.monotonic() - started
    assert entered.wait(10)
    print(f"handle() returned after {took * 1000:.1f} ms with the policy blocked")
    assert advices(fake_sock) == []
    with caplog.at_level(logging.WARNING):
        advisor.tick(T0 + 1 + timing.POLICY_TIMEOUT)
        assert [m.get("suggested_role") for m, _ in advices(fake_sock)] == ["controller"]
        release.set()
        deadline = time.monotonic() + 10
        while advisor._calls and time.monotonic() < deadline:
            time.sleep(0.01)
    assert advisor._calls == 0 and len(advices(fake_sock)) == 1
    assert "too late" in caplog.text


# --- Service.receive / send -----------------------------------------------------------------------

class Sink(Service):
    def handle(self, message, source_ip, now):
        pass

    def tick(self, now):
        return float("inf")


GARBAGE = [b"", b"\xff" * 50, b"{}", b"[]", b"null", b"{" * 5000, b'{"magic":"BUILD/HELLO/v1"}',
           b'{"magic":"BUILD/HELLO/v1","payload":{},"sig":"' + "é".encode() * 64 + b'"}',
           b'{"magic":"BUILD/HELLO/v1","payload":{"x":NaN},"sig":"' + b"0" * 64 + b'"}',
           b"x" * 10_000]


def test_receive_never_raises_on_garbage(caplog):
    service = Sink(None, [SECRET], "me")
    with caplog.at_level(logging.DEBUG, logger="build_agent.daemon"):
        for data in GARBAGE:
            assert service.receive(data, ("10.9.0.66", 50555), T0) is None
    assert service.rejects.total == len(GARBAGE)
    assert service.received == 0
    # Rate-limited: one debug line for the whole burst.
    assert len([r for r in caplog.records if "Dropped datagram" in r.getMessage()]) == 1


def test_receive_drops_wrong_secret_stale_and_replayed():
    service = Sink(None, [SECRET], "me")
    good = protocol.encode(protocol.make_payload("HELLO", "peer-1", "build1", "10.9.0.11", T0),
                           SECRET)
    other = protocol.encode(protocol.make_payload("HELLO", "peer-1", "build1", "10.9.0.11", T0),
                            b"the-wrong-secret-123")
    assert service.receive(other, ("10.9.0.11", 50555), T0) is None
    assert service.receive(good, ("10.9.0.11", 50555), T0 + 400) is None  # stale
    assert service.receive(good, ("10.9.0.11", 50555), T0) is not None
    assert service.receive(good, ("10.9.0.11", 50555), T0 + 1) is None  # replayed
    assert service.receive(good, ("10.9.0.66", 50555), T0 + 2) is None  # replayed from elsewhere
    assert service.received == 1
    assert service.rejects.counts["replayed"] == 2
    assert service.rejects.counts["bad signature"] == 1
    assert service.rejects.counts["stale"] == 1


def test_receive_drops_own_messages_quietly():
    service = Sink(None, [SECRET], "me")
    own = protocol.encode(protocol.make_payload("HELLO", "me", "build0", "10.9.0.2", T0), SECRET)
    assert service.receive(own, ("10.9.0.2", 50555), T0) is None
    assert service.rejects.total == 0 and service.received == 0


def test_send_signs_with_the_first_secret():
    new, old = b"new-secret-0123456789", b"old-secret-0123456789"
    service = Sink(None, [new, old], "me")
    sock = FakeSocket()
    service.send(sock, protocol.make_payload("HELLO", "me", "build0", "10.9.0.2", T0),
                 ("10.9.0.255", 50555))
    [(data, address)] = sock.sent
    assert address == ("10.9.0.255", 50555)
    assert protocol.decode(data, [new], T0).node_id == "me"
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data, [old], T0)
    # A peer still on the old secret is heard during the rotation.
    from_old = protocol.encode(protocol.make_payload("HELLO", "p", "b", "10.9.0.3", T0), old)
    assert service.receive(from_old, ("10.9.0.3", 50555), T0) is not None


def test_reload_says_reloaded_only_when_the_secrets_in_use_change(config, caplog, monkeypatch):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    new, old = "new-secret-0123456789", "old-secret-0123456789"
    service = Sink(config, [old.encode()], "me")
    steps = [(f"{old}\n", "Secret file unchanged: still using 1 secret(s)"),
             (f"{old}\n{new}\n", "Reloaded the shared secret (2 secret(s))"),
             (f"  {old}\n\n{new}  \n", "Secret file unchanged: still using 2 secret(s)"),
             (f"{new}\n{old}\n", "Reloaded the shared secret (2 secret(s))"),  # now new signs
             (f"{new}\n", "Reloaded the shared secret (1 secret(s))"),
             (f"{new}\n", "Secret file unchanged: still using 1 secret(s)")]
    for text, line in steps:
        _write_secret(Path(config.secret_file), text)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            service.reload()
        assert [r.getMessage() for r in caplog.records] == [line], text
    assert service.secrets == [new.encode()]


def test_send_never_raises(caplog):
    class BrokenSocket:
        def sendto(self, data, address):
            raise OSError(101, "Network is unreachable")
    service = Sink(None, [SECRET], "me")
    with caplog.at_level(logging.WARNING):
        service.send(BrokenSocket(), protocol.make_payload("HELLO", "me", "h", "10.9.0.2", T0),
                     ("10.9.0.255", 50555))
        sock = FakeSocket()
        service.send(sock, protocol.make_payload("HELLO", "me", "h", "10.9.0.2", T0,
                                                 pad="x" * 9000), ("10.9.0.255", 50555))
    assert sock.sent == []
    assert "Network is unreachable" in caplog.text and "oversized" in caplog.text


# --- SIGHUP: secret rotation -----------------------------------------------------------------------

def _write_secret(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)


def test_reload_reads_the_rotated_secret_file(config, caplog, monkeypatch):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    new, old = b"new-secret-0123456789", b"old-secret-0123456789"
    service = Sink(config, [old], "me")
    _write_secret(Path(config.secret_file), f"{new.decode()}\n{old.decode()}\n")
    with caplog.at_level(logging.INFO):
        service.reload()
    assert service.secrets == [new, old]
    assert "Reloaded the shared secret (2 secret(s))" in caplog.text
    # Now it signs with the new secret and still hears nodes on the old one.
    sock = FakeSocket()
    service.send(sock, protocol.make_payload("HELLO", "me", "h", "10.9.0.2", T0), ("x", 1))
    assert protocol.decode(sock.sent[0][0], [new], T0)
    from_old = protocol.encode(protocol.make_payload("HELLO", "p", "b", "10.9.0.3", T0), old)
    assert service.receive(from_old, ("10.9.0.3", 50555), T0) is not None


def test_reload_says_reloaded_only_when_the_secrets_in_use_change(config, caplog, monkeypatch):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    new, old = "new-secret-0123456789", "old-secret-0123456789"
    service = Sink(config, [old.encode()], "me")
    steps = [(f"{old}\n", "Secret file unchanged: still using 1 secret(s)"),
             (f"{old}\n{new}\n", "Reloaded the shared secret (2 secret(s))"),
             (f"  {old}\n\n{new}  \n", "Secret file unchanged: still using 2 secret(s)"),
             (f"{new}\n{old}\n", "Reloaded the shared secret (2 secret(s))"),  # now new signs
             (f"{new}\n", "Reloaded the shared secret (1 secret(s))"),
             (f"{new}\n", "Secret file unchanged: still using 1 secret(s)")]
    for text, line in steps:
        _write_secret(Path(config.secret_file), text)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            service.reload()
        assert [r.getMessage() for r in caplog.records] == [line], text
    assert service.secrets == [new.encode()]


@pytest.mark.parametrize("text, mode", [("new-secret-0123456789\n", 0o644), ("short\n", 0o600),
                                        ("", 0o600), (None, None)])
def test_reload_keeps_the_old_secret_when_the_file_is_unusable(config, caplog, monkeypatch,
                                                              text, mode):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    if text is not None:
        _write_secret(Path(config.secret_file), text, mode)
    service = Sink(config, [SECRET], "me")
    with caplog.at_level(logging.ERROR):
        service.reload()
    assert service.secrets == [SECRET]
    assert "Reload failed, keeping the old secret" in caplog.text


def test_agent_and_advisor_reload_the_secret(make_advisor, config, iface, clock, monkeypatch):
    monkeypatch.delenv("HIVE_SECRET_COPY", raising=False)
    _write_secret(Path(config.secret_file), "rotated-secret-0123456789\n")
    advisor = make_advisor()
    agent = Agent(config, [SECRET], iface, "n1", "build1", capabilities={}, clock=clock)
    for service in (agent, advisor):
        service.reload()
        assert service.secrets == [b"rotated-secret-0123456789"]


# --- re-asks: a member the hive's plan moves --------------------------------------------------

def test_a_reask_is_answered_with_the_role_the_plan_gives_the_mover(make_advisor, config,
                                                                    fake_sock, caplog):
    advisor = make_advisor()
    # founder (this node), two builders and two runners: the controller died.
    write_peers(config, [peer_entry(3), peer_entry(4), peer_entry(5, "runner"),
                         peer_entry(6, "runner")])
    caplog.set_level(logging.INFO)
    for node, host in (("member-6", "build6"), ("member-5", "build5")):
        feed(advisor, "IDENTIFY", node, host, "10.9.0.16", T0 + 1, request="who_am_i",
             reask=True, role="runner", capabilities={})
    (first, _), (second, _) = advices(fake_sock)
    assert (first.get("to"), first.get("suggested_role"), first.get("packages")) == \
        ("member-6", "controller", ["ansible", "git"])  # the youngest runner
    assert first.get("reason") == "the hive needs a 'controller' (0 of 1)"
    assert (second.get("to"), second.get("suggested_role")) == ("member-5", "runner")
    assert second.get("reason") == "the hive has what it needs: stay 'runner'"


# --- the advisor hears only its agent (issue 12: 200 hosts, floods) -----------------------------

def test_only_the_agents_hand_offs_reach_the_advisor(make_advisor, fake_sock, monkeypatch):
    """On its loopback socket, a datagram not sent from the agent's own address and port (a
    local process, even with a valid IDENTIFY captured from the LAN) is dropped unread."""
    advisor = make_advisor()
    parsed = []
    real_parse = protocol.parse_envelope
    monkeypatch.setattr(protocol, "parse_envelope", lambda d: parsed.append(1) or real_parse(d))
    data = protocol.encode(protocol.make_payload(
        "IDENTIFY", NEW_ID, "build9", "10.9.0.99", T0 + 1, request="who_am_i",
        candidate_ip=None, capabilities={}, attempt=0), SECRET)
    for sender, handed in ((("127.0.0.1", 40000), True), (("10.9.0.2", 40001), True),
                           (("10.9.0.66", 50555), True), (("127.0.0.1", 50555), False)):
        got, source = through_relay(data, "10.9.0.66", sender, handed)
        assert advisor.receive(got, source, T0 + 1) is None
    assert parsed == [] and fake_sock.sent == []
    assert advisor.rejects.counts["not handed over by the local agent"] == 4
    got, source = through_relay(data, "10.9.0.99")  # from the agent
    message = advisor.receive(got, source, T0 + 1)
    assert parsed == [1] and source == ("10.9.0.99", 50555)
    advisor.handle(message, source[0], T0 + 1)
    assert [(m.kind, address) for m, address in fake_sock.messages()] == \
        [("ADVICE", ("10.9.0.99", 50555))]


def test_a_hand_off_of_another_kind_is_dropped_unverified(make_advisor, monkeypatch):
    advisor = make_advisor()
    checked = []
    real_verify = protocol.verify
    monkeypatch.setattr(protocol, "verify", lambda *a: checked.append(a) or real_verify(*a))
    assert feed(advisor, "STATUS", "peer-1", "build21", "10.9.0.30", T0 + 1,
                role="runner") is None
    assert checked == [] and advisor.ignored == 1 and advisor.rejects.total == 0


def test_a_forged_identify_is_still_refused(make_advisor, fake_sock):
    advisor = make_advisor()
    data = protocol.encode(protocol.make_payload("IDENTIFY", NEW_ID, "build9", "10.9.0.99",
                                                 T0 + 1, request="who_am_i"), b"not-the-secret")
    assert advisor.receive(*through_relay(data, "10.9.0.99"), T0 + 1) is None
    assert advisor.rejects.counts["bad signature"] == 1 and fake_sock.sent == []


def test_peers_json_is_parsed_again_only_when_the_agent_replaced_it(make_advisor, config,
                                                                     monkeypatch):
    """While it waits for the agent to show a request the advisor looks at peers.json every
    VIEW_SYNC_POLL: an unchanged file is not parsed again (a stat), a replaced one is."""
    advisor = make_advisor()  # (it has read peers.json once already)
    reads = []
    real = state.read_json
    monkeypatch.setattr(state, "read_json", lambda path: reads.append(path) or real(path))
    first = advisor._peers(T0, fresh=True)
    for k in range(20):
        assert advisor._peers(T0 + k * timing.VIEW_SYNC_POLL, fresh=True) is first
    assert reads == []
    write_peers(config, [peer_entry(1)])  # the agent writes it anew (atomically)
    assert [p["hostname"] for p in advisor._peers(T0 + 1, fresh=True)["peers"]] == ["build1"]
    assert len(reads) == 1
    config.peers_path.write_text("{not json")  # unreadable: the last good view, tried again
    assert advisor._peers(T0 + 2, fresh=True)["peers"][0]["hostname"] == "build1"
    write_peers(config, [peer_entry(1), peer_entry(2)])
    assert len(advisor._peers(T0 + 3, fresh=True)["peers"]) == 2
