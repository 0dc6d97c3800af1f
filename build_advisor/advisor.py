"""build-advisor: answers a newcomer's IDENTIFY with ADVICE from the policy, and a member's
re-ask (healing) with the role the hive's plan gives it (see reask).

Its view of the hive has one source: the local agent's peers.json (membership.view_from_peers),
the same view the agent plans from; that includes this node itself (its node id and role).
An IDENTIFY carrying a request id is answered once peers.json shows the agent has heard it
(``requests``), so the view holds everything the agent heard before it (a joiner that settled
just ahead, say); at most VIEW_SYNC_TIMEOUT later it is answered with the view there is.  Only a
node that has an identity advises, and never itself.

A user's policy runs in a worker thread, never in the event loop (it may query a slow service):
the loop keeps hearing the hive and pinging the watchdog.  Each newcomer's advice has its own
deadline (timing.POLICY_TIMEOUT), after which the default policy answers; at most
MAX_POLICY_CALLS calls run at once (a call that never returns keeps its slot), beyond that the
default answers at once.  Whichever comes first, the policy's answer or the deadline, answers;
the other is dropped.  The built-in default policy runs in the loop: it is instant.

Batched rounds (mass joins): an IDENTIFY may list (``batch``) the joiners behind its sender in
the join order.  The advisor then advises the sender and every listed joiner it knows (from
peers.json's ``joiners``) in that order, each from the view plus those before it in the batch as
members with the roles just given them, exactly as one-after-another joins would be advised, and
sends each its own ADVICE (the round's request id, ``batch_of`` the sender).  It stops at the
first listed joiner it does not know (those after it are advised by the advisors that know it,
or ask in a later round).  The whole batch is one policy call with one deadline,
timing.POLICY_TIMEOUT: after it the default answers the sender if the policy has not, and the
rest of the batch is not advised here (they ask again in a later round).  What each joiner of a batch was
told is remembered (timing.BATCH_RESERVATION) and told again if it asks again.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from build_agent import state, timing
from build_agent.config import Config
from build_agent.daemon import Service
from build_agent.membership import view_entry, view_from_peers
from build_agent.netif import Interface
from build_agent.protocol import Message, make_payload

from .policy import (AnswerError, Policy, advise, as_received, default_suggest_role, describe,
                     desired_roles_of, evaluate, fallback)
from .reask import reask_policy

LOG = logging.getLogger(__name__)

MAX_POLICY_CALLS = 4  # policy calls running at once, per advisor

Spawn = Callable[[Callable[[], None]], None]


def start_thread(work: Callable[[], None]) -> None:
    """Run work in a daemon thread: one that never returns cannot keep the advisor from exiting."""
    threading.Thread(target=work, name="policy", daemon=True).start()


@dataclass
class Request:
    """A newcomer waiting for our advice."""
    message: Message      # its latest IDENTIFY: the ADVICE answers this one
    source_ip: str
    policy: Policy        # suggest_role for a newcomer, reask_policy(...) for a member moving
    default: Policy       # what answers when it fails or is late
    view: dict
    newcomer: dict
    peers: int            # peers in the view (for the log; the policy may change its copy)
    started: float        # steady clock
    deadline: float       # steady clock: then the default policy answers
    answered: bool = False


@dataclass
class Batch:
    """A batched round waiting for our advice: its sender and the joiners it listed, in order."""
    message: Message      # the sender's latest IDENTIFY
    source_ip: str
    entries: list         # newcomer dicts (node_id, hostname, ip, capabilities); [0] the sender
    fixed: dict           # index -> answer told already (a reservation): not asked again
    view: dict            # the hive before the batch
    wall: float           # wall clock: joined_at of the batch's simulated members
    started: float        # steady clock
    deadline: float       # steady clock: then the default policy answers the rest
    done: list = None     # answers given so far, in order (role, packages, config, reason)
    answered: bool = False  # the loop took over (deadline, no thread): the thread's are dropped

    def __post_init__(self) -> None:
        self.done = []

    def view_at(self, index: int) -> dict:
        """The view entry ``index`` is advised from: the hive plus those before it."""
        me, peers = self.view["self"], list(self.view["peers"])
        for entry, answer in zip(self.entries[:index], self.done):
            peers.append(view_entry(entry["node_id"], entry["hostname"], entry["ip"],
                                    answer["role"], entry["capabilities"], None, None, "ok",
                                    self.wall, self.wall, None, True, "active"))
        return {"self": me, "peers": peers, "members": [me] + peers}


def _answer_of(payload: dict) -> dict:
    return {"role": payload["suggested_role"], "packages": list(payload["packages"]),
            "config": dict(payload["config"]), "reason": payload["reason"]}


def _echo_request_id(identify: Message) -> dict:
    """ADVICE carries the asker's round id, when it sent one (reference nodes do not)."""
    request_id = identify.get("request_id")
    return {"request_id": request_id} if request_id else {}


class Advisor(Service):
    # It answers IDENTIFY and nothing else (its view of the hive is the agent's peers.json), and
    # hears only what its agent hands it (``receive``): the IDENTIFY the agent accepted.
    wanted_kinds = frozenset({"IDENTIFY"})

    def __init__(self, config: Config, secrets: Sequence[bytes], iface: Interface, hostname: str,
                 policy: Policy, clock: Callable[[], float] = time.time,
                 steady: Callable[[], float] = time.monotonic,
                 spawn: Spawn = start_thread) -> None:
        super().__init__(config, secrets, None, clock, steady)
        self.iface = iface
        self.hostname = hostname
        self.policy = policy
        self.desired_roles = desired_roles_of(policy)
        self.spawn = spawn
        self._lock = threading.Lock()  # the fields below are shared with the policy threads
        self._pending: dict[str, Request] = {}  # newcomer node id -> its unanswered request
        self._calls = 0  # policy calls running (returned or not, answered or not)
        self.sock = None
        self._view_data: dict | None = None  # peers.json as last read
        self._view_read = float("-inf")
        self._view_file: tuple | None = None  # (inode, mtime, size) of the peers.json last read
        self._syncing: dict[str, tuple[Message, str, float]] = {}  # waiting for peers.json
        self.advised = 0
        # Batched rounds: request id -> (node id -> answer told, expiry), and node id ->
        # (answer told in a batch, expiry): a joiner asking again is told the same.
        self._rounds: dict[str, tuple[dict[str, dict], float]] = {}
        self._reserved: dict[str, tuple[dict, float]] = {}

    def attach(self, sock) -> None:
        self.sock = sock

    def _peers(self, now: float, fresh: bool = False) -> dict | None:
        """peers.json, looked at at most once per PEERS_FILE_POLL unless ``fresh``, and parsed
        again only when the agent replaced it since (a stat: while an advisor waits for the agent
        to show a request it looks every VIEW_SYNC_POLL: a big file parsed that often was much of
        the advisors' CPU while a hive of 100-200 hosts formed)."""
        if fresh or now - self._view_read >= timing.PEERS_FILE_POLL:
            self._view_read = now
            try:
                st = os.stat(self.config.peers_path)
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp is not None and stamp == self._view_file:
                return self._view_data
            try:
                data = state.read_json(self.config.peers_path)
            except (ValueError, OSError) as exc:
                LOG.warning("Cannot read %s: %s", self.config.peers_path, exc)
                data = None
            if isinstance(data, dict):
                self._view_file = stamp
                self._view_data = data
                me = data.get("self")
                if isinstance(me, dict) and isinstance(me.get("node_id"), str):
                    self.node_id = me["node_id"]  # the agent's, also after a clone's new id
        return self._view_data

    @staticmethod
    def _members_in(data: dict | None) -> int:
        """Established members in peers.json, this node included."""
        if not isinstance(data, dict):
            return 0
        peers = [p for p in data.get("peers") or [] if isinstance(p, dict) and p.get("role")]
        me = data.get("self")
        return len(peers) + (1 if isinstance(me, dict) and me.get("role") else 0)

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> Message | None:
        """Its one socket is on 127.0.0.1, where the agent hands it every IDENTIFY the agent
        accepted, however it came, with the address it came from (netif.RelayListener reads
        it: ``source`` is that address).  Empty: not a hand-off of the local agent."""
        if not data:
            self.reject("not handed over by the local agent", source, now)
            return None
        return super().receive(data, source, now)

    def handle(self, message: Message, source_ip: str, now: float) -> None:
        if message.kind == "IDENTIFY":
            self._syncing.pop(message.node_id, None)
            self._advise(message, source_ip, now)

    def _advise(self, message: Message, source_ip: str, now: float,
                deadline: float | None = None) -> None:
        data = self._peers(now, fresh=True)
        if message.node_id == self.node_id:
            return  # a node never advises itself
        request_id = message.get("request_id")
        heard = (data or {}).get("requests") or {}
        if request_id and (heard.get(message.node_id) != request_id
                           or self._members_in(data) < (message.get("members") or 0)):
            # (``members``: how many members the asker knows; a view with fewer would not
            # count one that settled just before: in a mass join, the previous round's.)
            if deadline is None or now < deadline:  # the agent has not shown it yet: wait
                self._syncing[message.node_id] = (
                    message, source_ip, deadline if deadline is not None
                    else now + timing.VIEW_SYNC_TIMEOUT)
                return
            LOG.debug("Advising %s with peers.json as it is: the agent has not shown its request",
                      message.hostname)
        whole = view_from_peers(data) if data else None
        if whole is None:
            LOG.debug("Not advising %s: this node has no identity yet", message.hostname)
            return
        with self._lock:
            waiting = self._pending.get(message.node_id)
            if waiting is not None:  # it asked again while its policy call runs: one answer
                waiting.message, waiting.source_ip = message, source_ip
                return
        me = whole["self"]
        newcomer = {"node_id": message.node_id, "hostname": message.hostname, "ip": source_ip,
                    "capabilities": dict(message.get("capabilities") or {})}
        if not message.get("reask"):
            told, this_round = self._told(message, whole, now)
            if message.get("batch_of") and told is None:
                # A joiner of a batch asking again: only what its round told it is right (a
                # fresh answer would not count those before it); the round may still be on.
                LOG.debug("Not advising %s now: its round (%s's) has not advised it here",
                          message.hostname, message.get("batch_of"))
                return
            if told is not None and (this_round or not message.get("batch")):
                # It asks again (lost ADVICE, or a later round of its own): told the same.
                self._send_told(message, source_ip, told)
                return
            if message.get("batch"):
                self._advise_batch(message, source_ip, now, whole, newcomer,
                                   (data or {}).get("joiners"), told)
                return
        if message.get("reask") and message.get("role"):
            # A member moving: the plan is made from every member, the mover included.
            mover = next((m for m in whole["members"] if m["node_id"] == message.node_id),
                         None) or {**newcomer, "role": message.get("role"), "rebalance": True}
            newcomer = {**mover, "capabilities": newcomer["capabilities"]}
            members = [m for m in whole["members"] if m["node_id"] != message.node_id]
            members.append({**newcomer, "state": "active"})  # judged as when it began
            view = {"self": me, "peers": members[1:], "members": members}
            policy = reask_policy(self.policy, self.desired_roles, self.clock(),
                                  self.config.cooldown)
            default = reask_policy(default_suggest_role, desired_roles_of(default_suggest_role),
                                   self.clock(), self.config.cooldown)
            peers = len(members) - 1
        else:
            others = [p for p in whole["peers"] if p["node_id"] != message.node_id]
            view = {"self": me, "peers": others, "members": [me] + others}
            policy, default, peers = self.policy, default_suggest_role, len(others)
        request = Request(message, source_ip, policy, default, view, newcomer, peers, now,
                          now + timing.POLICY_TIMEOUT)
        if self.policy is default_suggest_role:
            self._answer(request, lambda build: advise(policy, view, newcomer, build))
            return
        with self._lock:
            busy = self._calls >= MAX_POLICY_CALLS
            if not busy:
                self._calls += 1
                self._pending[message.node_id] = request
        if busy:
            self._answer_with_default(request, f"{MAX_POLICY_CALLS} earlier policy calls are "
                                               f"still running")
            return
        try:
            self.spawn(functools.partial(self._call_policy, request))
        except RuntimeError as exc:  # no thread to be had
            with self._lock:
                self._calls -= 1
            if self._claim(request):
                self._answer_with_default(request, f"cannot start a thread: {exc}")

    def _advice_payload(self, request: Request, answer: dict) -> dict:
        """The one place an ADVICE payload is built."""
        return self._payload_to(request.message.node_id, request.message, answer)

    def _payload_to(self, node_id: str, identify: Message, answer: dict,
                    batch_of: str | None = None) -> dict:
        return make_payload("ADVICE", self.node_id, self.hostname, self.iface.address,
                            self.stamp(),
                            to=node_id, suggested_role=answer["role"],
                            packages=answer["packages"], config=answer["config"],
                            reason=answer["reason"], **_echo_request_id(identify),
                            **({"batch_of": batch_of} if batch_of else {}))

    # --- batched rounds (mass joins) -------------------------------------------------------------
    def _told(self, message: Message, whole: dict, now: float) -> tuple[dict | None, bool]:
        """What we told this joiner in a batched round (this one, or an earlier one it did not
        settle in), if anything, and whether in this round: a joiner asking again is told the
        same."""
        members = {m["node_id"] for m in whole["members"]}
        with self._lock:  # (a policy thread records what it told)
            for request_id, (told, until) in list(self._rounds.items()):
                if until <= now:
                    del self._rounds[request_id]
            for node_id, (_, until) in list(self._reserved.items()):
                if until <= now or node_id in members:
                    del self._reserved[node_id]
            told = self._rounds.get(message.get("request_id") or "", ({}, 0.0))[0]
            if message.node_id in told:
                return told[message.node_id], True
            reserved = self._reserved.get(message.node_id)
            return (reserved[0] if reserved is not None else None), False

    def _send_told(self, message: Message, source_ip: str, answer: dict) -> None:
        try:
            payload = as_received(self._payload_to(message.node_id, message, answer))
        except AnswerError as exc:
            LOG.error("Cannot advise %s: %s", message.hostname, exc)
            return
        self.send(self.sock, payload, (source_ip, self.config.port))
        with self._lock:
            self.advised += 1
        LOG.info(" -> %s: become '%s' (%s) [as told in its round]", message.hostname,
                 payload["suggested_role"], payload["reason"])

    def _advise_batch(self, message: Message, source_ip: str, now: float, whole: dict,
                      newcomer: dict, joiners: object, told: dict | None) -> None:
        """Advise the sender and the joiners its IDENTIFY lists, in order (see the module)."""
        known = {j["node_id"]: j for j in joiners if isinstance(j, dict)} \
            if isinstance(joiners, list) else {}
        members = {m["node_id"] for m in whole["members"]}
        listed = [n for n in message.get("batch") if n not in members and n != message.node_id]
        entries, fixed = [newcomer], ({0: told} if told is not None else {})
        for node_id in listed:
            entry = known.get(node_id)
            if not (isinstance(entry, dict) and isinstance(entry.get("hostname"), str)
                    and isinstance(entry.get("ip"), str)):
                LOG.info("Advising %d of the %d joining nodes of %s's round: %s is not known "
                         "here (yet)", len(entries), len(listed) + 1, message.hostname, node_id)
                break
            caps = entry.get("capabilities")
            with self._lock:
                reserved = self._reserved.get(node_id)
            if reserved is not None:
                fixed[len(entries)] = reserved[0]
            entries.append({"node_id": node_id, "hostname": entry["hostname"],
                            "ip": entry["ip"], "capabilities": dict(caps)
                            if isinstance(caps, dict) else {}})
        others = [p for p in whole["peers"] if p["node_id"] not in
                  {e["node_id"] for e in entries}]
        view = {"self": whole["self"], "peers": others, "members": [whole["self"]] + others}
        batch = Batch(message, source_ip, entries, fixed, view, self.clock(), now,
                      now + timing.POLICY_TIMEOUT)
        LOG.info("Advising %s and the %d joining node(s) after it in one round [%d peer(s) in "
                 "view]", message.hostname, len(entries) - 1, len(others))
        with self._lock:
            self._rounds[message.get("request_id")] = ({}, now + timing.BATCH_RESERVATION)
        if self.policy is default_suggest_role:
            self._finish_batch(batch, 0, None)
            return
        with self._lock:
            busy = self._calls >= MAX_POLICY_CALLS
            if not busy:
                self._calls += 1
                self._pending[message.node_id] = batch
        if busy:
            self._finish_batch(batch, 0, f"{MAX_POLICY_CALLS} earlier policy calls are still "
                                         f"running")
            return
        try:
            self.spawn(functools.partial(self._call_policy_batch, batch))
        except RuntimeError as exc:  # no thread to be had
            with self._lock:
                self._calls -= 1
            start = self._take_over(batch)
            if start is not None:
                self._finish_batch(batch, start, f"cannot start a thread: {exc}")

    def _batch_payload(self, batch: Batch, index: int, answer: dict) -> dict:
        entry = batch.entries[index]
        return self._payload_to(entry["node_id"], batch.message, answer,
                                batch.message.node_id if index else None)

    def _batch_advice(self, batch: Batch, index: int, policy: Policy, view: dict) -> dict:
        """The ADVICE payload for entry ``index`` (from policy, or what it was told already)."""
        build = functools.partial(self._batch_payload, batch, index)
        if index in batch.fixed:
            return evaluate(lambda v, n: batch.fixed[index], view, batch.entries[index], build)
        return evaluate(policy, view, batch.entries[index], build)

    def _finish_batch(self, batch: Batch, start: int, why: str | None) -> None:
        """In the loop: the built-in policy answers the whole batch (``why`` None).  Else the
        user's policy did not (``why``): the default answers the asker if it is still
        unanswered, as it would a lone newcomer, and the rest of the batch is left unadvised
        here: those nodes ask again in a later round.  (Advisors whose policy is late at
        different places would otherwise give the rest different roles: a slow policy may cost
        time, never a wrong role.)"""
        end = len(batch.entries)
        if why is not None:
            end = 1 if start == 0 else start
            if end < len(batch.entries):
                LOG.error("Policy failed for %s's round (%s): %d of its %d joining node(s) "
                          "not advised here; they ask again in a later round",
                          batch.message.hostname, why, len(batch.entries) - end,
                          len(batch.entries))
            if start == 0:
                LOG.error("Policy failed for %s (%s); using the default policy",
                          batch.message.hostname, why)
        for index in range(start, end):
            try:
                payload = self._batch_advice(batch, index, default_suggest_role,
                                             batch.view_at(index))
            except AnswerError as exc:
                LOG.error("Cannot advise %s: %s", batch.entries[index]["hostname"], exc)
                return  # the rest would be advised from a view missing this one
            batch.done.append(_answer_of(payload))
            self._send_batch_advice(batch, index, payload)

    def _take_over(self, batch: Batch) -> int | None:
        """The loop takes the rest of a batch (deadline): the index to go on from, or None if
        the thread finished it already."""
        with self._lock:
            if batch.answered:
                return None
            batch.answered = True
            if self._pending.get(batch.message.node_id) is batch:
                del self._pending[batch.message.node_id]
            return len(batch.done)

    def _call_policy_batch(self, batch: Batch) -> None:
        """In a worker thread: the policy advises the batch in order, each answer sent as it
        comes, until done or until the loop takes over at the deadline."""
        try:
            try:
                while True:
                    with self._lock:
                        index = len(batch.done)
                        if batch.answered or index == len(batch.entries):
                            break
                        view = batch.view_at(index)
                    try:
                        payload = self._batch_advice(batch, index, self.policy,
                                                     copy.deepcopy(view))
                    except (Exception, SystemExit) as exc:
                        LOG.error("Policy failed for %s (%s); using the default policy",
                                  batch.entries[index]["hostname"], describe(exc))
                        payload = self._batch_advice(batch, index, default_suggest_role, view)
                    with self._lock:
                        if batch.answered:
                            LOG.warning("Policy answered %s after the round's deadline (%.1f s): "
                                        "the default policy had answered",
                                        batch.entries[index]["hostname"],
                                        self.steady() - batch.started)
                            break
                        batch.done.append(_answer_of(payload))
                    self._send_batch_advice(batch, index, payload)
            finally:
                with self._lock:
                    self._calls -= 1
                    if len(batch.done) == len(batch.entries) and not batch.answered:
                        batch.answered = True
                        if self._pending.get(batch.message.node_id) is batch:
                            del self._pending[batch.message.node_id]
        except Exception:  # a bug here must not go unseen, nor take anything down
            LOG.exception("Error while advising %s's round", batch.message.hostname)

    def _send_batch_advice(self, batch: Batch, index: int, payload: dict) -> None:
        entry = batch.entries[index]
        answer = _answer_of(payload)
        until = batch.started + timing.BATCH_RESERVATION
        with self._lock:
            told = self._rounds.setdefault(batch.message.get("request_id"), ({}, until))[0]
            told[entry["node_id"]] = answer
            if index:
                self._reserved[entry["node_id"]] = (answer, until)
            self.advised += 1
        self.send(self.sock, payload, (entry["ip"], self.config.port))
        LOG.info(" -> %s: become '%s' (%s) [%d peer(s) in view, %d of %s's round]",
                 entry["hostname"], payload["suggested_role"], payload["reason"],
                 len(batch.view["peers"]) + index, index + 1, batch.message.hostname)

    def _call_policy(self, request: Request) -> None:
        """In a worker thread: run the policy on copies; answer unless the deadline passed."""
        try:
            payload, why = None, None
            try:
                view, newcomer = copy.deepcopy((request.view, request.newcomer))
                payload = evaluate(request.policy, view, newcomer,
                                   functools.partial(self._advice_payload, request))
            except (Exception, SystemExit) as exc:
                why = describe(exc)
            finally:
                with self._lock:
                    self._calls -= 1
            if not self._claim(request):
                LOG.warning("Policy call for %s returned after %.1f s, too late: the default "
                            "policy had answered", request.message.hostname,
                            self.steady() - request.started)
                return
            if why is not None:
                self._answer_with_default(request, why)
            else:
                self._send_advice(request, payload)
        except Exception:  # a bug here must not go unseen, nor take anything down
            LOG.exception("Error while advising %s", request.message.hostname)

    def _claim(self, request: Request) -> bool:
        """True for the first of (the policy's answer, the deadline) to reach this request."""
        with self._lock:
            if request.answered:
                return False
            request.answered = True
            if self._pending.get(request.message.node_id) is request:
                del self._pending[request.message.node_id]
            return True

    def _answer_with_default(self, request: Request, why: str) -> None:
        self._answer(request, lambda build: fallback(request.view, request.newcomer, build, why,
                                                     request.default))

    def _answer(self, request: Request, advice: Callable[[Callable[[dict], dict]], dict]) -> None:
        try:
            payload = advice(functools.partial(self._advice_payload, request))
        except AnswerError as exc:  # even the default's ADVICE would be dropped: say so once
            LOG.error("Cannot advise %s: %s", request.message.hostname, exc)
            return
        self._send_advice(request, payload)

    def _send_advice(self, request: Request, payload: dict) -> None:
        self.send(self.sock, payload, (request.source_ip, self.config.port))
        with self._lock:
            self.advised += 1
        LOG.info(" -> %s: become '%s' (%s) [%d peer(s) in view]", request.message.hostname,
                 payload["suggested_role"], payload["reason"], request.peers)

    def tick(self, now: float) -> float:
        if self.node_id is None:
            self._peers(now)  # the agent writes our node id into peers.json as it starts
        for node_id, (message, source_ip, deadline) in list(self._syncing.items()):
            del self._syncing[node_id]
            self._advise(message, source_ip, now, deadline)
        with self._lock:
            overdue = [r for r in self._pending.values() if r.deadline <= now]
        for request in overdue:
            if isinstance(request, Batch):
                start = self._take_over(request)
                if start is not None:
                    self._finish_batch(request, start, f"no answer for the whole round within "
                                                       f"{timing.POLICY_TIMEOUT:g} s")
                continue
            if self._claim(request):
                self._answer_with_default(request, f"no answer within "
                                                   f"{timing.POLICY_TIMEOUT:g} s")
        with self._lock:
            next_answer = min((r.deadline for r in self._pending.values()), default=float("inf"))
        syncing = now + timing.VIEW_SYNC_POLL if self._syncing else float("inf")
        return min(next_answer, syncing,
                   now + timing.PEERS_FILE_POLL if self.node_id is None else float("inf"))
