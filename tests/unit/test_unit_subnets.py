"""The agent, the advisor and the join/move state machine beyond one broadcast domain: the
fan-out, the WELCOME's address list, IDENTIFY handed to the advisor, the role guard, config."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from build_agent import protocol, timing
from build_agent.config import ConfigError, EtcdSettings, load_config
from build_agent.discovery import Discovery
from hive_fakes import SECRET, T0, through_relay
from test_unit_advisor import identify, make_advisor, advices  # noqa: F401 (fixture)
from test_unit_agent import (ME, advice_fields, deliver, make_agent, run_until,  # noqa: F401
                             sent, step)

FAR = "10.8.1.21"  # another subnet (ours: 10.9.0.0/24)
EPS = 0.001


def seeded(config, **keys):
    return replace(config, discovery=("broadcast", "seeds"), seeds=(FAR,), **keys)


def agent_with(make_agent, config, iface, cfg):
    agent = make_agent(cfg=cfg)
    agent.discovery = Discovery(cfg, iface)
    return agent


def as_channel(agent, channel):
    agent.discovery.note_channel(channel)


# --- the agent ---------------------------------------------------------------------------------

def test_a_joiner_says_hello_to_its_seed_and_to_the_members_its_welcome_lists(
        make_agent, config, iface, clock, fake_sock):
    agent = agent_with(make_agent, config, iface, seeded(config))
    agent.start(T0)
    step(agent, clock, T0)
    hellos = [addr for _, addr in sent(fake_sock, "HELLO")]
    assert hellos == [("10.9.0.255", 50555), (FAR, 50555)]
    fake_sock.clear()
    as_channel(agent, "unicast")
    deliver(agent, "WELCOME", "aaaa-1", "build1", FAR, T0 + 0.01, to=ME, role="founder",
            members=2, addresses=["10.8.2.22", FAR, "10.9.0.2"])
    # The new address gets a HELLO at once (not us, not the seed again).
    assert [addr for _, addr in sent(fake_sock, "HELLO")] == [("10.8.2.22", 50555)]
    as_channel(agent, "unicast")
    deliver(agent, "WELCOME", "bbbb-2", "build2", "10.8.2.22", T0 + 0.02, to=ME,
            role="controller", members=2)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    assert agent.phase == "ask" and agent.expected_advisors == 2  # discovery saw both
    identifies = [addr for _, addr in sent(fake_sock, "IDENTIFY")]
    assert identifies == [("10.9.0.255", 50555), (FAR, 50555), ("10.8.2.22", 50555)]


def test_heartbeats_reach_members_on_other_subnets_by_unicast(make_agent, config, iface, clock,
                                                              fake_sock):
    agent = make_agent()  # the default: broadcast only
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS, start=T0)  # founder
    as_channel(agent, "broadcast")
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", T0 + 2, role="builder",
            state="active", interval=10)
    as_channel(agent, "unicast")
    deliver(agent, "STATUS", "bbbb-2", "build2", FAR, T0 + 2, role="builder", state="active",
            interval=10)
    step(agent, clock, T0 + 2)
    fake_sock.clear()
    agent.shutdown()  # goodbyes: to everyone, however reached
    goodbyes = [addr for m, addr in sent(fake_sock, "STATUS") if m.get("state") == "leaving"]
    assert goodbyes == [("10.9.0.255", 50555), (FAR, 50555)] * 2
    peers = json.loads(config.peers_path.read_text())
    assert {p["hostname"]: p["reached"] for p in peers["peers"]} == {"build1": "broadcast",
                                                                    "build2": "unicast"}
    assert peers["discovery"] == {"methods": ["broadcast"]}


def test_a_welcome_to_a_hello_by_unicast_lists_the_hive(make_agent, config, iface, clock,
                                                        fake_sock):
    agent = make_agent()
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS, start=T0)
    as_channel(agent, "broadcast")
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", T0 + 2, role="builder",
            state="active", interval=10)
    fake_sock.clear()
    as_channel(agent, "unicast")
    deliver(agent, "HELLO", "cccc-3", "build3", FAR, T0 + 3, candidate_ip=None)
    [(welcome, address)] = sent(fake_sock, "WELCOME")
    assert address == (FAR, 50555)
    assert welcome.get("addresses") == ["10.9.0.11", "10.9.0.2"]
    fake_sock.clear()
    as_channel(agent, "broadcast")  # a neighbour: it hears the others itself
    deliver(agent, "HELLO", "dddd-4", "build4", "10.9.0.14", T0 + 4, candidate_ip=None)
    [(welcome, _)] = sent(fake_sock, "WELCOME")
    assert welcome.get("addresses") == [FAR]  # only the one it cannot hear


def test_every_identify_the_agent_accepts_is_handed_to_the_advisor_once_as_it_came(
        make_agent, clock, fake_sock):
    """The advisor hears only its agent: every verified IDENTIFY, however it came (broadcast,
    multicast, unicast), once per datagram, with the address it came from; nothing else."""
    agent = make_agent()
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS, start=T0)
    fake_sock.clear()
    asked = []
    for n, channel in enumerate(("broadcast", "multicast", "unicast")):
        as_channel(agent, channel)
        asked.append(deliver(agent, "IDENTIFY", f"cccc-{n}", f"build{n + 30}",
                             f"10.9.0.{n + 30}" if n < 2 else FAR, T0 + 3 + n,
                             request="who_am_i", request_id=f"r{n}"))
        step(agent, clock, T0 + 3 + n)  # (handed over by the tick, once peers.json shows it)
    handed = fake_sock.handed_over()
    assert [(m.node_id, ip) for m, ip, _ in handed] == \
        [("cccc-0", "10.9.0.30"), ("cccc-1", "10.9.0.31"), ("cccc-2", FAR)]
    for (_, _, datagram), message in zip(handed, asked):
        assert datagram == message.data  # the signed bytes as they came: not re-encoded
    assert {a for _, a in fake_sock.sent if a[0] == "127.0.0.1"} == {("127.0.0.1", 50555)}
    fake_sock.clear()
    # The same datagram again (a copy by another channel, a replay): not handed over again.
    for channel in ("unicast", "broadcast"):
        as_channel(agent, channel)
        assert agent.receive(asked[2].data, (FAR, 50555), T0 + 6) is None
    # Nothing else is handed over: heartbeats, HELLO, WELCOME, probes, ADVICE, tasks.
    as_channel(agent, "broadcast")
    deliver(agent, "STATUS", "aaaa-1", "build1", "10.9.0.11", T0 + 7, role="builder",
            state="active", interval=10)
    deliver(agent, "HELLO", "dddd-4", "build4", "10.9.0.14", T0 + 7, candidate_ip=None)
    deliver(agent, "PING", "aaaa-1", "build1", "10.9.0.11", T0 + 8, to=ME, seq=1)
    as_channel(agent, "unicast")
    deliver(agent, "WELCOME", "bbbb-2", "build2", FAR, T0 + 8, to=ME, role="builder",
            members=2)
    deliver(agent, "ADVICE", "bbbb-2", "build2", FAR, T0 + 9, **advice_fields("runner"))
    # A forged IDENTIFY (another secret) and our own: not handed over either.
    forged = protocol.encode(protocol.make_payload("IDENTIFY", "eeee-5", "build5", FAR, T0 + 9,
                                                   request="who_am_i"), b"not-the-secret-0")
    assert agent.receive(forged, (FAR, 50555), T0 + 9) is None
    own = protocol.encode(protocol.make_payload("IDENTIFY", ME, agent.hostname, "10.9.0.2",
                                                T0 + 9, request="who_am_i"), SECRET)
    assert agent.receive(own, ("10.9.0.2", 50555), T0 + 9) is None
    step(agent, clock, T0 + 9)
    assert fake_sock.handed_over() == []


def test_the_advisor_answers_where_its_agent_heard_the_asker(make_advisor, fake_sock):
    """The agent hands over the address it heard the IDENTIFY from; the advisor answers there,
    as the agent itself would (a WELCOME): not at the ``primary_ip`` the asker wrote (a host
    whose hive LAN is not its default route, a 1:1 NAT between sites)."""
    advisor = make_advisor()
    for n, (primary, heard) in enumerate(((FAR, FAR), ("192.168.5.9", "10.9.0.77"))):
        data = protocol.encode(protocol.make_payload(
            "IDENTIFY", f"new-node-{n}", f"build{n + 9}", primary, T0 + 1, request="who_am_i",
            candidate_ip=None, capabilities={}, attempt=0), SECRET)
        data, source = through_relay(data, heard)
        message = advisor.receive(data, source, T0 + 1)
        advisor.handle(message, source[0], T0 + 1)
    assert [address for _, address in advices(fake_sock)] == [(FAR, 50555),
                                                              ("10.9.0.77", 50555)]


# --- the role guard in the state machine -------------------------------------------------------

class ScriptedGuard:
    def __init__(self, claims):
        self.claims = list(claims)
        self.begun = []
        self.claimed = []

    def begin(self, now, founding=False, move=False):
        self.begun.append((founding, move))
        return None

    def claim(self, role):
        self.claimed.append(role)
        return self.claims.pop(0)


def test_a_refused_claim_sends_the_joiner_to_ask_again(make_agent, clock, fake_sock, config,
                                                        caplog):
    agent = make_agent()
    guard = agent.life.guard = ScriptedGuard([False, True])
    caplog.set_level(logging.INFO)
    agent.start(T0)
    step(agent, clock, T0)
    deliver(agent, "WELCOME", "aaaa-1", "build1", "10.9.0.11", T0 + 0.01, to=ME, role="founder",
            members=1)
    run_until(agent, clock, T0 + timing.DISCOVERY_MIN + EPS)
    first = agent.request_id
    deliver(agent, "ADVICE", "aaaa-1", "build1", "10.9.0.11", T0 + 0.1,
            **advice_fields(role="controller", request_id=first))
    run_until(agent, clock, T0 + 0.1 + EPS)
    assert agent.role is None and agent.phase in ("wait", "ask")
    assert guard.claimed == ["controller"]
    # Another node took the controller meanwhile; asked again, the hive says builder.
    deliver(agent, "STATUS", "bbbb-2", "build2", "10.8.2.22", T0 + 0.2, role="controller",
            state="active", interval=10)
    run_until(agent, clock, T0 + 0.3)
    assert agent.phase == "ask" and agent.request_id != first
    for node, ip in (("aaaa-1", "10.9.0.11"), ("bbbb-2", "10.8.2.22")):
        deliver(agent, "ADVICE", node, f"build{node[-1]}", ip, T0 + 0.4,
                **advice_fields(request_id=agent.request_id))
    run_until(agent, clock, T0 + 0.4 + EPS)
    assert agent.role == "builder" and guard.claimed == ["controller", "builder"]
    assert guard.begun == [(False, False), (False, False)]


def test_a_refused_founding_discovers_again(make_agent, clock):
    agent = make_agent()
    guard = agent.life.guard = ScriptedGuard([False, True])
    agent.start(T0)
    run_until(agent, clock, T0 + timing.DISCOVERY_MAX + EPS, start=T0)
    assert agent.role is None and agent.phase == "discover"
    assert guard.begun == [(True, False)] and guard.claimed == ["founder"]


# --- configuration ------------------------------------------------------------------------------

def toml(tmp_path, text):
    path = tmp_path / "hive.toml"
    path.write_text(text)
    return str(path)


def test_every_discovery_key(tmp_path):
    config = load_config(toml(tmp_path, '''
discovery = ["broadcast", "multicast", "seeds", "etcd", "seeds"]
multicast_group = "239.1.2.3"
multicast_ttl = 4
seeds = ["10.20.1.11", "build1.example.net:50555"]
[etcd]
endpoints = ["http://10.20.0.5:2379/", "https://etcd.example.net:2379"]
prefix = "/hives/blue/"
'''))
    assert config.discovery == ("broadcast", "multicast", "seeds", "etcd")
    assert config.multicast_group == "239.1.2.3" and config.multicast_ttl == 4
    assert config.seeds == ("10.20.1.11", "build1.example.net:50555")
    assert config.etcd == EtcdSettings(("http://10.20.0.5:2379", "https://etcd.example.net:2379"),
                                       "/hives/blue/")


def test_discovery_defaults(tmp_path):
    config = load_config(toml(tmp_path, ""))
    assert config.discovery == ("broadcast",) and config.multicast_group == "239.255.0.1"
    assert config.multicast_ttl == 1 and config.seeds == () and config.etcd.endpoints == ()


@pytest.mark.parametrize("text, expected", [
    ('discovery = ["broadcast", "carrier-pigeon"]', "unknown method 'carrier-pigeon'"),
    ('discovery = []', "must be a list of methods"),
    ('discovery = "seeds"', "must be a list of methods"),
    ('multicast_group = "10.1.2.3"', "must be an IPv4 multicast address"),
    ('multicast_group = "239.1.2"', "must be an IPv4 multicast address"),
    ('multicast_ttl = 0', "from 1 to 255"),
    ('multicast_ttl = true', "from 1 to 255"),
    ('discovery = ["seeds"]\nseeds = ["10.1.2.3:0"]', "'10.1.2.3:0' is not an address"),
    ('discovery = ["seeds"]\nseeds = ["bad name"]', "'bad name' is not an address"),
    ('discovery = ["seeds"]\nseeds = "10.1.2.3"', "must be a list of addresses"),
    ('discovery = ["seeds"]', "no seeds are set"),
    ('seeds = ["10.1.2.3"]', "discovery does not list \"seeds\""),
    ('discovery = ["etcd"]', "[etcd] has no endpoints"),
    ('[etcd]\nendpoints = ["http://10.1.2.3:2379"]', "discovery does not list \"etcd\""),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = ["ftp://10.1.2.3:2379"]',
     "is not an etcd client URL"),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = ["10.1.2.3:2379"]', "is not an etcd client URL"),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = ["http://u:p@10.1.2.3:2379"]',
     "is not an etcd client URL"),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = ["http://10.1.2.3:99999"]',
     "is not an etcd client URL"),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = "http://10.1.2.3:2379"', "must be a list"),
    ('discovery = ["etcd"]\n[etcd]\nendpoints = ["http://10.1.2.3:2379"]\nprefix = "hive"',
     "ending in '/'"),
    ('discovery = ["etcd"]\n[etcd]\nendpoint = ["http://10.1.2.3:2379"]',
     "unknown key(s) in [etcd]: endpoint"),
    ('etcd = "http://10.1.2.3:2379"', "must be a table"),
])
def test_bad_discovery_values_are_one_clear_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(toml(tmp_path, text + "\n"))
    assert "\n" not in str(info.value)
    assert expected in str(info.value), str(info.value)
