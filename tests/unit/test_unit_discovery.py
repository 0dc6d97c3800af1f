"""Where messages for everyone go (discovery.Discovery) and the seeds' addresses."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from build_agent import timing
from build_agent.discovery import Discovery, SeedResolver, welcome_addresses
from hive_fakes import T0, message

PORT = 50555
NEAR, FAR, FAR2 = "10.9.0.11", "10.8.1.21", "10.8.2.22"  # our subnet is 10.9.0.0/24


def make(config, iface, **keys) -> Discovery:
    return Discovery(replace(config, **keys), iface)


def heard(d: Discovery, ip: str, channel: str, now: float = T0) -> None:
    d.note_channel(channel)
    d.heard(ip, now)


def test_one_subnet_sends_exactly_one_broadcast(config, iface):
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    assert d.targets("STATUS", [NEAR], T0) == [("10.9.0.255", PORT)]
    assert d.reached(NEAR, T0) == "broadcast"


def test_a_member_on_another_subnet_gets_unicast(config, iface):
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    heard(d, FAR, "unicast")
    assert d.targets("STATUS", [NEAR, FAR], T0) == [("10.9.0.255", PORT), (FAR, PORT)]
    assert d.reached(FAR, T0) == "unicast"


def test_a_neighbour_heard_only_by_unicast_gets_unicast(config, iface):
    """A LAN that drops broadcast, with seeds: same subnet, but never heard by broadcast."""
    d = make(config, iface, discovery=("broadcast", "seeds"), seeds=(NEAR,))
    heard(d, NEAR, "unicast")
    assert (NEAR, PORT) in d.targets("STATUS", [NEAR], T0)


def test_a_neighbour_heard_only_by_unicast_where_the_lan_carries_broadcast(config, iface):
    """Others' broadcasts are heard on the subnet: a neighbour heard only by unicast so far (a
    WELCOME, its broadcast HELLO went out before we listened) hears ours too: no unicast copies,
    and its address in a WELCOME's list is nothing to learn (no HELLO to it)."""
    d = make(config, iface, discovery=("broadcast", "seeds"), seeds=(FAR,))
    heard(d, NEAR, "unicast")
    heard(d, "10.9.0.60", "broadcast")
    assert d.targets("STATUS", [NEAR, "10.9.0.60"], T0) == [("10.9.0.255", PORT)]
    assert d.reached(NEAR, T0) == "broadcast"
    assert d.learn(["10.9.0.70", FAR2], T0) == [FAR2]
    assert d.welcome_list([NEAR, "10.9.0.60"], "10.9.0.50", T0) is None
    # Not on a LAN whose broadcasts stopped coming, nor off the subnet, nor without broadcast.
    window = timing.GROUP_HEARD_INTERVALS * timing.STATUS_INTERVALS_MAX * config.heartbeat_interval
    assert d.reached(NEAR, T0 + window + 0.1) == "unicast"
    assert d.reached(FAR, T0) == "unicast"
    d = make(config, iface, discovery=("multicast",))
    heard(d, "10.9.0.60", "broadcast")
    assert d.reached(NEAR, T0) == "unicast"


def test_broadcast_heard_from_another_subnet_address_does_not_cover_it(config, iface):
    d = make(config, iface)
    heard(d, FAR, "broadcast")  # (cannot happen on a router; the subnet check holds anyway)
    assert d.reached(FAR, T0) == "unicast"


def test_being_heard_by_group_goes_stale(config, iface):
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    window = timing.GROUP_HEARD_INTERVALS * timing.STATUS_INTERVALS_MAX * config.heartbeat_interval
    assert window >= 3 * 90  # three of the longest routine STATUS intervals
    assert d.reached(NEAR, T0 + window) == "broadcast"
    assert d.reached(NEAR, T0 + window + 0.1) == "unicast"


def test_a_group_we_do_not_send_to_does_not_cover(config, iface):
    """We hear its broadcasts, but we only send multicast: it gets unicast."""
    d = make(config, iface, discovery=("multicast",))
    heard(d, NEAR, "broadcast")
    assert d.targets("STATUS", [NEAR], T0) == [("239.255.0.1", PORT), (NEAR, PORT)]
    heard(d, NEAR, "multicast")
    assert d.targets("STATUS", [NEAR], T0) == [("239.255.0.1", PORT)]
    assert d.reached(NEAR, T0) == "multicast"


def test_seeds_get_hello_and_are_never_this_node(config, iface, caplog):
    d = make(config, iface, discovery=("seeds",), seeds=(FAR, "10.9.0.2", "127.0.1.1",
                                                          f"{FAR2}:6000"))
    caplog.set_level(logging.INFO)
    targets = d.targets("HELLO", [], T0)
    assert targets == [(FAR, PORT), (FAR2, 6000)]  # not our own address, not loopback
    assert "Seed address 127.0.1.1 is this node" in caplog.text
    # Other kinds go to the seeds only while we know nobody.
    assert d.targets("STATUS", [], T0) == [(FAR, PORT), (FAR2, 6000)]
    assert d.targets("STATUS", [NEAR], T0) == [(NEAR, PORT)]


def test_seeds_that_are_not_members_get_hello_again_now_and_then(config, iface):
    d = make(config, iface, discovery=("seeds",), seeds=(FAR, FAR2))
    assert d.seeds_due([FAR], T0) == [(FAR2, PORT)]
    assert d.seeds_due([FAR], T0 + 1) == []
    assert d.seeds_due([FAR, FAR2], T0 + timing.SEED_RETRY) == []


def test_learned_addresses_are_tried_then_forgotten(config, iface):
    d = make(config, iface, discovery=("seeds",), seeds=(FAR,))
    assert d.learn([FAR2, NEAR, "10.9.0.2"], T0, known=[NEAR]) == [FAR2]  # new, not ours
    assert (FAR2, PORT) in d.targets("STATUS", [FAR], T0)
    assert d.learn([FAR2], T0 + 1) == []
    assert (FAR2, PORT) not in d.targets("STATUS", [FAR], T0 + 1 + timing.LEARNED_ADDRESS_TTL)


def test_welcome_lists_everyone_to_a_newcomer_that_came_by_unicast(config, iface):
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    d.note_channel("unicast")  # its HELLO came to our own address
    assert d.welcome_list([NEAR, FAR, FAR2], FAR2, T0) == [FAR, "10.9.0.11", "10.9.0.2"]


def test_welcome_lists_the_unicast_members_to_a_newcomer_that_broadcast(config, iface):
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    heard(d, FAR, "unicast")
    heard(d, "10.9.0.50", "broadcast")  # (the agent notes the sender before it answers)
    assert d.welcome_list([NEAR, FAR], "10.9.0.50", T0) == [FAR]
    assert d.welcome_list([NEAR], "10.9.0.50", T0) is None  # one subnet: nothing added


def test_welcome_to_a_unicast_hello_from_a_newcomer_our_broadcasts_reach(config, iface):
    """A joiner sends its HELLO repeats by unicast too, to members it heard only by unicast:
    answered with every node, 100 joiners started together learned each other's addresses and
    said HELLO to each by unicast, each answered with the whole list again."""
    d = make(config, iface)
    heard(d, NEAR, "broadcast")
    heard(d, FAR, "unicast")
    heard(d, "10.9.0.50", "broadcast")  # its first HELLO
    heard(d, "10.9.0.50", "unicast")  # a repeat, to our own address
    assert d.welcome_list([NEAR, FAR], "10.9.0.50", T0) == [FAR]


def test_welcome_list_fits_in_a_datagram(config, iface):
    d = make(config, iface)
    d.note_channel("unicast")
    many = [f"10.{a}.{b}.1" for a in range(10, 12) for b in range(200)]
    assert len(d.welcome_list(many, FAR, T0)) == timing.WELCOME_MAX_ADDRESSES


def test_welcome_addresses_keeps_only_addresses():
    msg = message("WELCOME", "aaaa-1", "build1", NEAR, T0, role="founder",
                  addresses=[FAR, "not-an-ip", 5, "999.1.1.1", FAR2, None])
    assert welcome_addresses(msg) == [FAR, FAR2]
    assert welcome_addresses(message("WELCOME", "aaaa-1", "build1", NEAR, T0,
                                     addresses="10.0.0.1")) == []


def test_describe(config, iface):
    d = make(config, iface, discovery=("broadcast", "multicast", "seeds"), seeds=(FAR,))
    assert d.describe(T0) == {"methods": ["broadcast", "multicast", "seeds"],
                              "multicast_group": "239.255.0.1", "seeds": [FAR]}


# --- seed names ----------------------------------------------------------------------------------

def test_seed_names_resolve_and_failures_are_said_once(caplog):
    answers = {"build1.example.net": ["10.8.1.21"], "gone.example.net": OSError(-2, "Name or "
                                                                              "service not known")}

    def resolve(host):
        answer = answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer
    seeds = SeedResolver(["build1.example.net", "gone.example.net:6000", "10.8.2.22"], PORT,
                         resolve)
    assert seeds.addresses() == [("10.8.2.22", PORT)]  # literal: known at once
    caplog.set_level(logging.INFO)
    assert seeds.resolve_all() is False
    assert sorted(seeds.addresses()) == [("10.8.1.21", PORT), ("10.8.2.22", PORT)]
    assert seeds.resolve_all() is False
    assert caplog.text.count("Seed gone.example.net:6000 does not resolve") == 1
    answers["gone.example.net"] = ["10.8.3.23"]
    assert seeds.resolve_all() is True
    assert ("10.8.3.23", 6000) in seeds.addresses()
    assert "Seed gone.example.net:6000 resolves again: 10.8.3.23" in caplog.text


def test_a_resolver_that_never_answers_holds_the_start_at_most_a_moment(monkeypatch):
    import threading
    release = threading.Event()
    monkeypatch.setattr(timing, "SEED_RESOLVE_WAIT", 0.2)

    def resolve(host):
        release.wait(5)
        return ["10.8.1.21"]
    seeds = SeedResolver(["slow.example.net"], PORT, resolve)
    import time
    started = time.monotonic()
    seeds.start()
    assert time.monotonic() - started < 1.0
    assert seeds.addresses() == []
    release.set()


@pytest.mark.parametrize("text", ["10.1.2.3", "10.1.2.3:1", "a", "build-1.example.net:65535"])
def test_seed_syntax_good(text):
    from build_agent.config import parse_seed
    parse_seed(text)


@pytest.mark.parametrize("text", ["", " 10.1.2.3", "10.1.2.3:0", "10.1.2.3:65536", "a..b",
                                  "-a.b", "a_b", "10.1.2", "http://x", "x:", "x:y", "1.2.3.4.5"])
def test_seed_syntax_bad(text):
    from build_agent.config import parse_seed
    with pytest.raises(ValueError):
        parse_seed(text)
