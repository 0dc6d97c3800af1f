"""hive watch's decoding (wiretap.py: IPv4/UDP, fragments, verdicts) and hive send's parsing
(hivesend.py), without sockets."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from build_agent import hivesend, protocol, wiretap
from hive_fakes import SECRET, T0

OTHER = b"another-secret-0123456789"


def ip_packets(src: str, dst: str, sport: int, dport: int, data: bytes, mtu: int = 1500,
               ident: int = 7) -> list[bytes]:
    """An IPv4/UDP datagram as the kernel puts it on the wire: fragments of at most MTU."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    step = (mtu - 20) // 8 * 8
    packets = []
    for offset in range(0, len(udp), step):
        chunk = udp[offset:offset + step]
        more = offset + step < len(udp)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident,
                             (0x2000 if more else 0) | offset // 8, 64, 17, 0,
                             socket.inet_aton(src), socket.inet_aton(dst))
        packets.append(header + chunk)
    return packets


def signed(kind="STATUS", node="aaaa-1", ts=T0, secret=SECRET, **fields) -> bytes:
    fields.setdefault("role", "builder") if kind == "STATUS" else None
    return protocol.encode(protocol.make_payload(kind, node, "build1", "10.9.0.11", ts,
                                                 **fields), secret)


def test_a_small_datagram_is_one_packet_and_is_decoded():
    (packet,) = ip_packets("10.9.0.11", "10.9.0.255", 50555, 50555, b"hello")
    parsed = wiretap.parse_ipv4(packet)
    assert (parsed.src, parsed.dst, parsed.offset, parsed.more) == ("10.9.0.11", "10.9.0.255",
                                                                    0, False)
    datagram = wiretap.Reassembler().add(parsed, T0)
    assert (datagram.sport, datagram.dport, datagram.data) == (50555, 50555, b"hello")


def test_fragments_are_reassembled_in_any_order_and_holes_wait():
    data = bytes(range(256)) * 30  # 7680 bytes: six fragments
    packets = [wiretap.parse_ipv4(p) for p in ip_packets("10.9.0.11", "10.9.0.2", 50555,
                                                         50555, data)]
    assert len(packets) == 6
    reassembler = wiretap.Reassembler()
    order = [5, 0, 3, 1, 4]
    assert all(reassembler.add(packets[i], T0) is None for i in order)  # fragment 2 missing
    datagram = reassembler.add(packets[2], T0)
    assert datagram is not None and datagram.data == data and not reassembler.pending


def test_incomplete_fragments_expire():
    packets = [wiretap.parse_ipv4(p) for p in ip_packets("10.9.0.11", "10.9.0.2", 1, 2,
                                                         b"x" * 4000)]
    reassembler = wiretap.Reassembler()
    reassembler.add(packets[0], T0)
    reassembler.add(packets[1], T0 + wiretap.REASSEMBLY_TIMEOUT + 1)
    assert list(reassembler.pending) == [("10.9.0.11", "10.9.0.2", 7)]
    assert len(reassembler.pending[("10.9.0.11", "10.9.0.2", 7)][1]) == 1  # the old one went


def test_not_udp_or_not_ipv4_is_ignored():
    (packet,) = ip_packets("10.9.0.11", "10.9.0.2", 1, 2, b"x")
    tcp = packet[:9] + bytes([6]) + packet[10:]
    assert wiretap.parse_ipv4(tcp) is None
    assert wiretap.parse_ipv4(b"\x60" + packet[1:]) is None  # IPv6
    assert wiretap.parse_ipv4(packet[:10]) is None


def test_verdicts_ok_forged_unsigned_replayed_stale_invalid():
    guard = protocol.ReplayGuard()
    good = signed(ts=T0)
    verdict = wiretap.classify(good, [SECRET], T0, guard)
    assert verdict.status == wiretap.OK and verdict.payload["kind"] == "STATUS"
    assert wiretap.classify(good, [SECRET], T0 + 1, guard).status == wiretap.REPLAYED
    forged = wiretap.classify(signed(ts=T0 + 2, secret=OTHER), [SECRET], T0 + 2, guard)
    assert (forged.status, forged.reason) == (wiretap.FORGED, "bad signature")
    assert forged.payload["role"] == "builder"  # what it claims, shown
    unsigned = json.dumps({"magic": protocol.MAGIC, "payload": {"kind": "STATUS"}}).encode()
    verdict = wiretap.classify(unsigned, [SECRET], T0, guard)
    assert verdict.status == wiretap.UNSIGNED and verdict.payload == {"kind": "STATUS"}
    verdict = wiretap.classify(b"ping\n", [SECRET], T0, guard)
    assert (verdict.status, verdict.reason, verdict.payload) == (wiretap.UNSIGNED, "not json",
                                                                 None)
    assert wiretap.classify(signed(ts=T0 - 3600), [SECRET], T0, None).status == wiretap.STALE
    bad = json.loads(signed(ts=T0 + 3))
    bad["payload"]["role"] = "Not A Role"
    bad["sig"] = protocol.sign(bad["payload"], SECRET)
    verdict = wiretap.classify(json.dumps(bad).encode(), [SECRET], T0 + 3, None)
    assert (verdict.status, verdict.reason) == (wiretap.INVALID, "bad field: role")
    # Any of several secrets verifies (a rotation).
    assert wiretap.classify(signed(ts=T0 + 4, secret=OTHER), [SECRET, OTHER], T0 + 4,
                            None).status == wiretap.OK


def test_tap_directions_loopback_and_other_ports():
    tap = wiretap.Tap(50555)
    data = signed()
    (packet,) = ip_packets("10.9.0.2", "10.9.0.11", 50555, 50555, data)
    out = tap.feed(packet, ("eth0", wiretap.ETH_P_IP, wiretap.PACKET_OUTGOING, 1, b""), T0)
    assert out[0] == "out" and out[1].data == data
    assert tap.feed(packet, ("eth0", wiretap.ETH_P_IP, 0, 1, b""), T0)[0] == "in"
    # On lo each packet shows twice (outgoing, then arriving): counted once, as arriving.
    assert tap.feed(packet, ("lo", wiretap.ETH_P_IP, wiretap.PACKET_OUTGOING, 772, b""),
                    T0) is None
    assert tap.feed(packet, ("lo", wiretap.ETH_P_IP, 0, 772, b""), T0)[0] == "in"
    # The agent's hand-off to its advisor on 127.0.0.1 is not a second message.
    (relay,) = ip_packets("10.9.0.2", "127.0.0.1", 50555, 50555, data)
    assert tap.feed(relay, ("lo", wiretap.ETH_P_IP, 0, 772, b""), T0) is None
    (other,) = ip_packets("10.9.0.2", "10.9.0.11", 53, 5353, data)
    assert tap.feed(other, ("eth0", wiretap.ETH_P_IP, 0, 1, b""), T0) is None
    assert tap.feed(packet, ("eth0", 0x86DD, 0, 1, b""), T0) is None


def test_a_copy_to_another_address_is_a_duplicate_not_a_replay():
    tap = wiretap.Tap(50555)
    data = signed()
    first = wiretap.Datagram("10.9.0.11", 50555, "10.9.0.255", 50555, data)
    copy = wiretap.Datagram("10.9.0.11", 50555, "10.9.0.2", 50555, data)
    assert tap.copy_of_recent(first, T0) is False
    assert tap.copy_of_recent(copy, T0 + 0.01) is True
    assert tap.copy_of_recent(copy, T0 + 1) is False  # the same address again: a replay
    assert tap.copy_of_recent(first, T0 + 1 + wiretap.COPY_WINDOW + 1) is False


def test_describe_shows_kind_sender_and_fields():
    payload = json.loads(signed(state="active"))["payload"]
    line = wiretap.describe(payload, b"")
    assert line.startswith("STATUS    build1") and 'role="builder" state="active"' in line
    assert wiretap.describe(None, b"ping\n") == "(5 bytes: 'ping ')"


# --- hive send ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("10", 10), ("-3", -3), ("0.5", 0.5), ("true", True), ("false", False), ("null", None),
    ("[0.5,0.4]", [0.5, 0.4]), ('{"cpu_cores":4}', {"cpu_cores": 4}), ('"10"', "10"),
    ("builder", "builder"), ("10.77.1.21", "10.77.1.21"), ("1-2", "1-2"), ("", ""),
    ("True", "True"), ("[oops", "[oops"),
])
def test_values_are_json_where_they_look_like_it_else_text(text, value):
    assert hivesend.parse_value(text) == value


def test_fields_must_be_key_value_once_and_not_kind_or_ts():
    assert hivesend.parse_fields(["role=builder", "interval=10", "note=a=b"]) == \
        {"role": "builder", "interval": 10, "note": "a=b"}
    for bad, word in ((["role"], "not key=value"), (["=x"], "not key=value"),
                      (["role=a", "role=b"], "twice"), (["ts=1"], "set by hive send"),
                      (["kind=HELLO"], "set by hive send")):
        with pytest.raises(hivesend.SendError, match=word):
            hivesend.parse_fields(bad)


def test_build_signs_what_receivers_accept_and_names_a_bad_field():
    payload, data = hivesend.build("status", {"role": "tester", "interval": 30,
                                              "node_id": "test-1"}, "me-1", "build2",
                                   "10.9.0.2", T0, SECRET)
    message = protocol.decode(data, [SECRET], T0)
    assert (message.kind, message.node_id, message.hostname, message.get("role")) == \
        ("STATUS", "test-1", "build2", "tester")
    assert list(payload)[-1] == "ts"
    with pytest.raises(hivesend.SendError, match="bad field 'role'"):
        hivesend.build("STATUS", {"role": "Not A Role"}, "me-1", "b", "10.9.0.2", T0, SECRET)
    with pytest.raises(hivesend.SendError, match="bad field 'primary_ip'"):
        hivesend.build("HELLO", {"primary_ip": "nowhere"}, "me-1", "b", "10.9.0.2", T0, SECRET)
    with pytest.raises(hivesend.SendError, match="missing field 'suggested_role'"):
        hivesend.build("ADVICE", {}, "me-1", "b", "10.9.0.2", T0, SECRET)
    with pytest.raises(hivesend.SendError, match="unknown kind 'NOPE'"):
        hivesend.build("NOPE", {}, "me-1", "b", "10.9.0.2", T0, SECRET)
    with pytest.raises(hivesend.SendError, match="oversized"):
        hivesend.build("STATUS", {"blob": "x" * 9000}, "me-1", "b", "10.9.0.2", T0, SECRET)


def test_destination_broadcast_address_or_to():
    assert hivesend.destination(None, "10.9.0.255", 50555) == ("10.9.0.255", 50555)
    assert hivesend.destination("10.9.0.7", "x", 50555) == ("10.9.0.7", 50555)
    assert hivesend.destination("10.9.0.7:50600", "x", 50555) == ("10.9.0.7", 50600)
    assert hivesend.destination("localhost", "x", 50555) == ("127.0.0.1", 50555)
    with pytest.raises(hivesend.SendError, match="port"):
        hivesend.destination("10.9.0.7:99999", "x", 50555)


def test_send_uses_an_ephemeral_port_never_the_hives():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = hivesend.send(b"x", "127.0.0.1", receiver.getsockname())
        data, (ip, sport) = receiver.recvfrom(100)
    assert data == b"x" and sport == port != 50555


def test_watch_and_send_refuse_non_root_in_one_line(monkeypatch, capsys, config):
    from build_agent import cli
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    args = cli.build_parser().parse_args(["watch", "--seconds", "1"])
    assert cli.cmd_watch(config, args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sudo hive watch" in err
