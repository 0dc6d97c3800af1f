"""Where the agent's messages for everyone go, and how each member is reached.

hive.toml's ``discovery`` lists the methods, any combination of:
  broadcast  the subnet's broadcast address (one broadcast domain; the default)
  multicast  the group ``multicast_group`` (a LAN whose switches drop broadcast)
  seeds      HELLO to each of ``seeds``; their WELCOME lists the hive's addresses
  etcd       the members' records in etcd (build_agent.etcd)

A message for everyone (HELLO, IDENTIFY, STATUS, goodbyes) goes to the group addresses of the
active methods, and by unicast to every node we know of that those do not reach: members and
joiners heard from, addresses learned from a WELCOME or from etcd, and (HELLO) the seeds.  A node
is reached by broadcast or multicast when we heard it that way lately (a method we send by too),
and by broadcast when it is on our subnet and we hear others' broadcasts there (the LAN carries
broadcast); so a hive on one subnet sends exactly what it sent before, and a node elsewhere, or
on a LAN that drops broadcast, gets unicast.
This holds whatever this node's own methods are: a broadcast-only member answers a node that
came through a seed, and keeps it posted, by unicast.  Membership and failure detection do not
change: they see the same messages, however they travelled.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from typing import Callable, Iterable

from . import timing
from .config import Config, parse_seed
from .netif import Interface
from .protocol import is_ipv4

LOG = logging.getLogger(__name__)

GROUP_CHANNELS = ("broadcast", "multicast")


def welcome_addresses(message) -> list[str]:
    """The valid IPv4 addresses of a WELCOME's ``addresses`` list (anything else is ignored)."""
    raw = message.get("addresses")
    if not isinstance(raw, list):
        return []
    return [item for item in raw[:timing.WELCOME_MAX_ADDRESSES]
            if isinstance(item, str) and len(item) <= 15 and is_ipv4(item)]


class SeedResolver:
    """The seeds' addresses.  Literal addresses are known at once; names are resolved in a
    thread (never in the agent's loop), again every SEED_RESOLVE_INTERVAL, and a name that does
    not resolve is tried again after SEED_RESOLVE_RETRY, said once."""

    def __init__(self, seeds: Iterable[str], port: int,
                 resolve: Callable[[str], list[str]] | None = None) -> None:
        self.port = port
        self._resolve = resolve or _resolve_ipv4
        self._lock = threading.Lock()
        self._names: dict[str, int | None] = {}
        self._addresses: dict[str, list[tuple[str, int]]] = {}
        self._failed: set[str] = set()
        self._done = threading.Event()
        for text in seeds:
            host, port_ = parse_seed(text)
            try:
                ipaddress.IPv4Address(host)
                self._addresses[text] = [(host, port_ or port)]
            except ValueError:
                self._names[text] = port_
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._names:
            return
        self._thread = threading.Thread(target=self._work, name="seeds", daemon=True)
        self._thread.start()
        self._done.wait(timing.SEED_RESOLVE_WAIT)  # the first answers, bounded

    def addresses(self) -> list[tuple[str, int]]:
        with self._lock:
            return [a for found in self._addresses.values() for a in found]

    def resolve_all(self) -> bool:
        """Resolve every name once; True if all resolved."""
        ok = True
        for text, port in self._names.items():
            host = text.rpartition(":")[0] if port is not None else text
            try:
                found = [(ip, port or self.port) for ip in self._resolve(host)]
            except OSError as exc:
                found = []
                reason = exc.strerror or str(exc)
            else:
                reason = "no IPv4 address"
            with self._lock:
                if found:
                    self._addresses[text] = found
                    if text in self._failed:
                        self._failed.discard(text)
                        LOG.info("Seed %s resolves again: %s", text,
                                 ", ".join(ip for ip, _ in found))
                else:
                    ok = False
                    if text not in self._failed:
                        self._failed.add(text)
                        LOG.warning("Seed %s does not resolve (%s): trying again every %g s; "
                                    "the other seeds and methods are used meanwhile", text,
                                    reason, timing.SEED_RESOLVE_RETRY)
        return ok

    def _work(self) -> None:
        while True:
            ok = self.resolve_all()
            self._done.set()
            time.sleep(timing.SEED_RESOLVE_INTERVAL if ok else timing.SEED_RESOLVE_RETRY)


def _resolve_ipv4(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class Discovery:
    """The fan-out targets and the "how reached" of one agent."""

    def __init__(self, config: Config, iface: Interface, registry=None,
                 seeds: SeedResolver | None = None) -> None:
        self.methods = tuple(config.discovery)
        self.iface = iface
        self._network = None  # iface.network, once asked (see _on_subnet)
        self._subnet_cache: dict[str, bool] = {}
        self.port = config.port
        self.group = config.multicast_group if "multicast" in self.methods else None
        self.window = timing.GROUP_HEARD_INTERVALS * timing.STATUS_INTERVALS_MAX \
            * config.heartbeat_interval
        self.registry = registry  # etcd.Registry, with "etcd"
        self.seeds = seeds if seeds is not None else SeedResolver(
            config.seeds if "seeds" in self.methods else (), config.port)
        # How the datagram being handled came (set by netif.Listener before each one).
        self.channel = "broadcast"
        self._group_heard: dict[str, tuple[str, float]] = {}  # ip -> (channel, steady time)
        self._subnet_broadcast = float("-inf")  # when another node's broadcast was last heard
        self._learned: dict[str, float] = {}  # ip -> until (steady time)
        self._self_seeds: set[str] = set()
        self._next_seed_hello = 0.0

    def start(self) -> None:
        self.seeds.start()

    # --- what we hear -----------------------------------------------------------------------
    def note_channel(self, channel: str) -> None:
        self.channel = channel

    def heard(self, ip: str, now: float) -> None:
        """A verified message from ``ip`` arrived on ``self.channel``."""
        if self.channel in GROUP_CHANNELS:
            self._group_heard[ip] = (self.channel, now)
            if self.channel == "broadcast" and ip != self.iface.address and self._on_subnet(ip):
                self._subnet_broadcast = now
        self._learned.pop(ip, None)  # a node heard from is known as a member or joiner

    def learn(self, addresses: Iterable[str], now: float, known: Iterable[str] = ()
              ) -> list[str]:
        """Addresses of the hive (a WELCOME's list, etcd): tried until LEARNED_ADDRESS_TTL.
        Returns those that are new (neither learned nor ``known`` before).  An address our
        broadcasts reach is not one to learn: it hears us, and we hear it."""
        skip = set(known)
        new = []
        for ip in addresses:
            if ip == self.iface.address or ip.startswith("127.") \
                    or self.reached(ip, now) != "unicast":
                continue
            if ip not in self._learned and ip not in skip:
                new.append(ip)
            self._learned[ip] = now + timing.LEARNED_ADDRESS_TTL
        return new

    def _sends_by(self, channel: str) -> bool:
        return channel in self.methods

    def reached(self, ip: str, now: float) -> str:
        """'broadcast' or 'multicast' when that reaches the node, else 'unicast'.  A node on our
        subnet that we heard only by unicast so far is reached by broadcast if we send by it
        and hear others' broadcasts on the subnet: 100 joiners started together heard each
        other first by unicast (a WELCOME; the broadcast HELLO went out before they listened),
        and sent one another unicast copies of every broadcast, and HELLOs for the lists."""
        channel, when = self._group_heard.get(ip, (None, float("-inf")))
        if channel is not None and self._sends_by(channel) and now - when <= self.window \
                and self._on_subnet(ip):
            return channel
        if now - self._subnet_broadcast <= self.window and "broadcast" in self.methods \
                and self._on_subnet(ip):
            return "broadcast"
        return "unicast"

    def _on_subnet(self, ip: str) -> bool:
        """Is ``ip`` on our interface's subnet?  Remembered per address (peers.json asks for
        every member at every write; bounded)."""
        known = self._subnet_cache.get(ip)
        if known is None:
            if len(self._subnet_cache) >= 4096:
                self._subnet_cache.clear()
            if self._network is None:
                self._network = self.iface.network
            known = self._subnet_cache[ip] = ipaddress.IPv4Address(ip) in self._network
        return known

    # --- where messages for everyone go -----------------------------------------------------
    def _unicast_candidates(self, known: Iterable[str], now: float, hello: bool
                            ) -> dict[str, int]:
        out: dict[str, int] = {}
        for ip, until in list(self._learned.items()):
            if until <= now:
                del self._learned[ip]
            else:
                out[ip] = self.port
        for ip in known:
            out[ip] = self.port
        if self.registry is not None:
            for ip, port in self.registry.addresses():
                out.setdefault(ip, port)
        if hello or not out:
            for ip, port in self.seeds.addresses():
                out[ip] = port
        return out

    def targets(self, kind: str, known: Iterable[str], now: float) -> list[tuple[str, int]]:
        """Every address a message for everyone goes to: group addresses first."""
        out: list[tuple[str, int]] = []
        if "broadcast" in self.methods:
            out.append((self.iface.broadcast, self.port))
        if self.group is not None:
            out.append((self.group, self.port))
        for ip, port in self._unicast_candidates(known, now, kind == "HELLO").items():
            if ip == self.iface.address or ip.startswith("127.") or ip == "0.0.0.0":
                if ip != self.iface.address and ip not in self._self_seeds:
                    self._self_seeds.add(ip)
                    LOG.info("Seed address %s is this node: not sent to", ip)
                continue
            if port == self.port and self.reached(ip, now) != "unicast":
                continue
            out.append((ip, port))
        return out

    def seeds_due(self, members: Iterable[str], now: float) -> list[tuple[str, int]]:
        """Seeds that are not members, every SEED_RETRY: a HELLO brings them (and the hive
        they know) back after they were down or the hive split."""
        if now < self._next_seed_hello:
            return []
        self._next_seed_hello = now + timing.SEED_RETRY
        known = set(members)
        return [(ip, port) for ip, port in self.seeds.addresses()
                if ip not in known and ip != self.iface.address and not ip.startswith("127.")]

    def welcome_list(self, known: Iterable[str], newcomer_ip: str, now: float
                     ) -> list[str] | None:
        """The addresses a WELCOME carries (None: no list).  To a newcomer we reach by unicast
        only (it may hear nobody else): every node we know.  To one we reach by broadcast or
        multicast, whichever way this HELLO came: the nodes we reach by unicast only (it would
        not hear of them otherwise: a member on another subnet).  (A joiner also sends its HELLO
        by unicast to members it heard only by unicast, their WELCOMEs: answered with every
        node, 100 joiners started together learned each other's addresses from those lists and
        said HELLO to each by unicast, each answered with the whole list again.)  At most
        WELCOME_MAX_ADDRESSES (a random choice beyond that: the newcomer asks those it reaches
        for theirs)."""
        others = {ip for ip in known if ip != newcomer_ip}
        if self.reached(newcomer_ip, now) == "unicast":
            addresses = sorted(others | {self.iface.address})
        else:
            addresses = sorted(ip for ip in others if self.reached(ip, now) == "unicast")
            if not addresses:
                return None  # it hears everyone we know the way it reached us
        if len(addresses) > timing.WELCOME_MAX_ADDRESSES:
            addresses = sorted(random.sample(addresses, timing.WELCOME_MAX_ADDRESSES))
        return addresses

    def describe(self, now: float) -> dict:
        """For peers.json and `hive status`."""
        out: dict = {"methods": list(self.methods)}
        if self.group is not None:
            out["multicast_group"] = self.group
        if "seeds" in self.methods:
            out["seeds"] = sorted({ip for ip, _ in self.seeds.addresses()})
        if self.registry is not None:
            out["etcd"] = self.registry.status()
        return out
