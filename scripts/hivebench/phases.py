"""The seven measurements.  Each takes a running Lab and returns plain data for the JSON report.

Times are seconds.  "Observed" times come from one polling loop that checks every observer about
every 10 ms (peers.json files for our hive, Serf's RPC for Serf), so ours and Serf's are seen the
same way; the join time is the identity.json file's own write time (its mtime).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .lab import Host, Lab, cpu_seconds, first_log_time, log_size, log_tail, rss_mb
from .netns import socket_in
from . import wire

POLL = 0.01  # seconds between two rounds of the polling loop
HERE = Path(__file__).resolve().parent


class Budget:
    """The run's wall-clock allowance: phases that no longer fit are skipped, not started."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def stats(samples, timeouts: int = 0, digits: int = 3) -> dict:
    values = [round(float(v), digits) for v in samples if v is not None]
    out = {"n": len(values), "timeouts": timeouts + sum(1 for v in samples if v is None)}
    if values:
        out.update(median=round(statistics.median(values), digits), min=min(values),
                   max=max(values))
    else:
        out.update(median=None, min=None, max=None)
    out["samples"] = values
    return out


def sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# --- views ----------------------------------------------------------------------------------------
def ours_lists(observer: Host, target: Host) -> bool:
    return target.name in observer.alive_peers()


def serf_lists(lab: Lab, observer: Host, target: Host) -> bool | None:
    names = lab.serf_alive(observer, f"^{target.serf_name}$")
    return None if names is None else target.serf_name in names


def wait_ours_converged(hosts: list[Host], timeout: float) -> bool:
    """Every running agent lists every other running agent as alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [h for h in hosts if h.running("agent")]
        names = {h.name for h in live}
        if all(names - {h.name} <= h.alive_peers() for h in live):
            return True
        time.sleep(0.05)
    return False


def wait_ours_gone(observers: list[Host], targets: list[Host], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    names = {t.name for t in targets}
    while time.monotonic() < deadline:
        if not any(names & o.alive_peers() for o in observers if o.running("agent")):
            return True
        time.sleep(0.05)
    return False


def wait_serf_converged(lab: Lab, hosts: list[Host], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [h for h in hosts if h.running("serf")]
        names = {h.serf_name for h in live}
        if all((lab.serf_alive(h) or set()) >= names for h in live):
            return True
        time.sleep(0.1)
    return False


def wait_serf_gone(lab: Lab, observers: list[Host], targets: list[Host], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    names = {t.serf_name for t in targets}
    while time.monotonic() < deadline:
        views = [lab.serf_alive(o) for o in observers if o.running("serf")]
        if all(v is not None and not (names & v) for v in views):
            return True
        time.sleep(0.1)
    return False


def wait_identity(host: Host, timeout: float) -> float | None:
    """Seconds from the agent's start to identity.json's write, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mtime = host.identity_mtime()
        if mtime is not None and host.identity() is not None:
            return mtime - host.started["agent"]
        if not host.running("agent"):
            return None
        time.sleep(POLL)
    return None


# --- building a hive -----------------------------------------------------------------------------
def grow(lab: Lab, new: list[Host], seed: Host, log, serf: bool = True) -> list[str]:
    """Start hosts one after another (each waits for its identity); Serf on each, joining seed."""
    roles = []
    for host in new:
        lab.start_ours(host)
        if wait_identity(host, 30) is None:
            log(f"  warning: {host.name} has no identity after 30 s (see {host.dir}/agent.log)")
        identity = host.identity() or {}
        roles.append(identity.get("role", "(none)"))
        if serf:  # a host whose earlier Serf node left comes back as a new node (new name)
            lab.start_serf(host, seed, fresh=bool(host.serf_name))
    return roles


def settle(lab: Lab, hosts: list[Host], log, serf: bool = True) -> None:
    if not wait_ours_converged(hosts, 30):
        log("  warning: our hive did not converge within 30 s")
    if serf and not wait_serf_converged(lab, hosts, 60):
        log("  warning: the Serf cluster did not converge within 60 s")


# --- 1. founder -------------------------------------------------------------------------------------
def founder(lab: Lab, host: Host, samples: int, serf_samples: int, log) -> dict:
    ours, roles = [], []
    for _ in range(samples):
        lab.wipe_state(host)
        lab.start_ours(host)
        took = wait_identity(host, 15)
        ours.append(took)
        roles.append((host.identity() or {}).get("role"))
        lab.signal_ours(host, signal.SIGTERM)
    serf = []
    for _ in range(serf_samples):
        t0 = lab.start_serf(host, None)
        seen = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = lab.serf_alive(host)
            if names and host.serf_name in names:
                seen = time.time() - t0
                break
            time.sleep(POLL)
        serf.append(seen)
        lab.signal_serf(host, signal.SIGTERM)
    lab.wipe_state(host)
    log(f"  founder: ours {fmt(stats(ours))}; serf agent answering: {fmt(stats(serf))}")
    return {"ours_s": stats(ours), "ours_roles": roles, "serf_ready_s": stats(serf)}


# --- 1 + 2. join time and convergence ---------------------------------------------------------------
def join_ours_once(lab: Lab, joiner: Host, members: list[Host], timeout: float = 30) -> dict:
    """Start a brand-new node; time to identity, to being listed by every member, to leaving."""
    lab.wipe_state(joiner)
    log_at = log_size(joiner.dir / "agent.log")
    t0 = lab.start_ours(joiner)
    join = None
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        if join is None:
            mtime = joiner.identity_mtime()
            if mtime is not None:
                join = mtime - t0
        for m in members:
            if m.index not in seen and ours_lists(m, joiner):
                seen[m.index] = now - t0
        if join is not None and len(seen) == len(members):
            break
        time.sleep(POLL)
    converge = max(seen.values()) if len(seen) == len(members) else None
    role = (joiner.identity() or {}).get("role")
    # the interpreter's start-up (imports, sockets) ends at the agent's first log line
    up = first_log_time(joiner.dir / "agent.log", log_at, "build-agent")
    startup = up - t0 if up is not None and join is not None and -0.01 < up - t0 < join else None
    crashed = [f"{joiner.name}/{k} (exit {joiner.procs[k].returncode})"
               for k in ("agent", "advisor") if not joiner.running(k)]
    # graceful leave: SIGTERM, then gone from every member's peers.json
    t1 = lab.signal_ours(joiner, signal.SIGTERM, wait=0)
    gone = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any(ours_lists(m, joiner) for m in members):
            gone = time.time() - t1
            break
        time.sleep(POLL)
    lab.reap_ours(joiner)
    lab.wipe_state(joiner)
    if gone is None:
        wait_ours_gone(members, [joiner], 40)
    return {"join": join, "converge": converge, "leave": gone, "role": role, "startup": startup,
            "crashed": crashed}


def join_serf_once(lab: Lab, joiner: Host, members: list[Host], seed: Host,
                   timeout: float = 30) -> dict:
    t0 = lab.start_serf(joiner, seed, fresh=True)  # a new server: a new node name
    size = len(members) + 1
    join = None
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        if join is None:
            names = lab.serf_alive(joiner)
            if names is not None and len(names) >= size:
                join = now - t0
        for m in members:
            if m.index not in seen and serf_lists(lab, m, joiner):
                seen[m.index] = now - t0
        if join is not None and len(seen) == len(members):
            break
        time.sleep(POLL)
    converge = max(seen.values()) if len(seen) == len(members) else None
    t1 = lab.signal_serf(joiner, signal.SIGINT, wait=0)  # SIGINT: Serf's graceful leave
    gone = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any(serf_lists(lab, m, joiner) for m in members):
            gone = time.time() - t1
            break
        time.sleep(POLL)
    lab.reap_serf(joiner)
    if gone is None:
        wait_serf_gone(lab, members, [joiner], 30)
    return {"join": join, "converge": converge, "leave": gone}


def join_series(lab: Lab, joiner: Host, members: list[Host], seed: Host, samples: int,
                log) -> dict:
    ours, serf = [], []
    for _ in range(samples):  # alternate, so both see the same machine load over the series
        ours.append(join_ours_once(lab, joiner, members))
        serf.append(join_serf_once(lab, joiner, members, seed))
    out = {
        "size": len(members) + 1,
        "ours_join_s": stats([r["join"] for r in ours]),
        "ours_converge_s": stats([r["converge"] for r in ours]),
        "ours_leave_s": stats([r["leave"] for r in ours]),
        "ours_roles": [r["role"] for r in ours],
        "ours_startup_s": stats([r["startup"] for r in ours]),
        "serf_join_s": stats([r["join"] for r in serf]),
        "serf_converge_s": stats([r["converge"] for r in serf]),
        "serf_leave_s": stats([r["leave"] for r in serf]),
    }
    log(f"  size {out['size']}: ours join {fmt(out['ours_join_s'])}, converge "
        f"{fmt(out['ours_converge_s'])}; serf join {fmt(out['serf_join_s'])}, converge "
        f"{fmt(out['serf_converge_s'])}")
    return out


# --- 3. failure detection ----------------------------------------------------------------------------
def failure_round(lab: Lab, hosts: list[Host], ours_victims: list[Host],
                  serf_victims: list[Host], graceful: bool, timeout: float, seed: Host,
                  settle: float = 0.0) -> dict:
    """Kill (-9) or stop our daemons on some hosts and Serf on others, at the same moment;
    seconds until each victim is gone from every surviving observer's view; then restore."""
    ours_obs = [h for h in hosts if h not in ours_victims and h.running("agent")]
    serf_obs = [h for h in hosts if h not in serf_victims and h.running("serf")]
    sent = {}
    for v in ours_victims:
        sent[("ours", v.index)] = lab.signal_ours(v, signal.SIGTERM if graceful else signal.SIGKILL,
                                                  wait=0)
    for v in serf_victims:
        sent[("serf", v.index)] = lab.signal_serf(v, signal.SIGINT if graceful else signal.SIGKILL,
                                                  wait=0)
    gone: dict = {}
    # Serf observers that no longer list a victim (a crashed node does not come back here): not
    # asked again.  Ours are looked at between every two Serf RPCs: at 200 hosts on a busy
    # machine one sweep of 199 RPCs took minutes, and ours was looked at only once per sweep.
    serf_left: dict = {v.index: list(serf_obs) for v in serf_victims}

    def look_at_ours() -> None:
        now = time.time()
        for v in ours_victims:
            key = ("ours", v.index)
            if key not in gone and not any(ours_lists(o, v) for o in ours_obs):
                gone[key] = now - sent[key]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(gone) < len(sent):
        look_at_ours()
        for v in serf_victims:
            key = ("serf", v.index)
            if key in gone:
                continue
            for o in list(serf_left[v.index]):
                if time.monotonic() >= deadline:
                    break
                if serf_lists(lab, o, v) is False:
                    serf_left[v.index].remove(o)
                look_at_ours()
            if not serf_left[v.index]:
                gone[key] = time.time() - sent[key]
        time.sleep(POLL)
    for v in ours_victims:
        lab.reap_ours(v)
    for v in serf_victims:
        lab.reap_serf(v)
    # restore: the same nodes come back (ours keep their identity)
    for v in ours_victims:
        lab.start_ours(v)
    for v in serf_victims:  # a crashed node restarts under its name; one that left, as new
        lab.start_serf(v, seed if v is not seed else None, fresh=graceful)
    wait_ours_converged(hosts, 30)
    wait_serf_converged(lab, hosts, 45)
    # One heartbeat of quiet: a node restarted just now knows the others as of its restart, not
    # of their last heartbeat, and would otherwise keep a victim of the next round up to 3
    # intervals after that restart (correct, but not the steady state this measures).
    time.sleep(settle)
    return {"ours": [gone.get(("ours", v.index)) for v in ours_victims],
            "serf": [gone.get(("serf", v.index)) for v in serf_victims]}


def failures(lab: Lab, hosts: list[Host], seed: Host, rounds: int, per_round: int,
             interval: float, graceful_too: bool, serf_too: bool, log) -> dict:
    """Rounds of simultaneous failures: ours on one set of victims, Serf on another."""
    candidates = [h for h in hosts if h is not seed]
    kill_ours, kill_serf, stop_ours, leave_serf = [], [], [], []
    timeout = 3 * interval + 20
    for r in range(rounds):
        pick = [candidates[(r * 2 * per_round + k) % len(candidates)] for k in range(2 * per_round)]
        ours_v, serf_v = pick[:per_round], pick[per_round:] if serf_too else []
        last = r == rounds - 1 and not graceful_too
        res = failure_round(lab, hosts, ours_v, serf_v, False, max(timeout, 60 if serf_v else 0),
                            seed, settle=0.0 if last else interval)
        kill_ours += res["ours"]
        kill_serf += res["serf"]
        if graceful_too:
            res = failure_round(lab, hosts, ours_v, serf_v, True, 20, seed,
                                settle=0.0 if r == rounds - 1 else interval)
            stop_ours += res["ours"]
            leave_serf += res["serf"]
    out = {"hosts": len(hosts), "interval_s": interval, "ours_kill_s": stats(kill_ours)}
    if graceful_too:
        out["ours_stop_s"] = stats(stop_ours)
    if serf_too:
        out["serf_kill_s"] = stats(kill_serf)
        if graceful_too:
            out["serf_leave_s"] = stats(leave_serf)
    log(f"  failure ({len(hosts)} hosts, heartbeat {interval:g} s): ours kill -9 "
        f"{fmt(out['ours_kill_s'])}" + (f", stop {fmt(out['ours_stop_s'])}" if graceful_too else "")
        + (f"; serf kill -9 {fmt(out['serf_kill_s'])}" if serf_too else "")
        + (f", leave {fmt(out['serf_leave_s'])}" if serf_too and graceful_too else ""))
    return out


# --- 6. footprint --------------------------------------------------------------------------------------
def footprint(lab: Lab, seconds: float, log) -> dict:
    procs = lab.daemons()
    before = {pid: cpu_seconds(pid) for _, _, pid in procs}
    t0 = time.monotonic()
    sleep_until(t0 + seconds)
    window = time.monotonic() - t0
    per_kind: dict = collections.defaultdict(lambda: {"rss_mb": [], "hwm_mb": [], "cpu_s": []})
    lost = []
    for host, kind, pid in procs:
        end = cpu_seconds(pid)
        mem = rss_mb(pid)
        if end is None or mem is None or before.get(pid) is None:
            lost.append(f"{host.name}/{kind}")
            continue
        per_kind[kind]["rss_mb"].append(mem[0])
        per_kind[kind]["hwm_mb"].append(mem[1])
        per_kind[kind]["cpu_s"].append(end - before[pid])
    out = {"hosts": len({h.index for h, _, _ in procs}), "window_s": round(window, 1),
           "exited_during_window": lost}
    for kind, values in per_kind.items():
        out[kind] = {"rss_mb": stats(values["rss_mb"], digits=1),
                     "hwm_mb": stats(values["hwm_mb"], digits=1),
                     "cpu_s": stats(values["cpu_s"], digits=2),
                     "cpu_percent": round(100 * statistics.median(values["cpu_s"]) / window, 3)}
    log("  footprint: " + "; ".join(
        f"{k} RSS {out[k]['rss_mb']['median']} MB, CPU {out[k]['cpu_s']['median']} s/{window:.0f} s"
        for k in ("agent", "advisor", "serf") if k in out))
    return out


# --- 7. wire cost ---------------------------------------------------------------------------------------
def wire_cost(lab: Lab, seconds: float, log) -> dict:
    cap = wire.Capture(lab.name, seconds)
    procs = lab.daemons()
    cpu0 = {pid: cpu_seconds(pid) for _, _, pid in procs}
    cap.start()
    cap.join()
    if cap.error:
        log(f"  wire: {cap.error}")
        return {"error": cap.error}
    secs = cap.elapsed
    out: dict = {"hosts": len(lab.hosts), "window_s": round(secs, 1),
                 "counted": "whole Ethernet frames on each host's veth, by port (hive UDP 50555, "
                            "Serf TCP/UDP 7946)"}
    for cls in ("hive", "serf", "arp"):
        for direction in ("tx", "rx"):
            per_host = [cap.bytes.get((h, cls, direction), 0) / secs for h in lab.hosts]
            out[f"{cls}_{direction}_Bps"] = stats(per_host, digits=1)
            frames = [cap.frames.get((h, cls, direction), 0) / secs for h in lab.hosts]
            out[f"{cls}_{direction}_fps"] = stats(frames, digits=2)
    cpu = collections.defaultdict(list)
    for _, kind, pid in procs:
        end = cpu_seconds(pid)
        if end is not None and cpu0.get(pid) is not None:
            cpu[kind].append(end - cpu0[pid])
    out["cpu_s"] = {kind: stats(v, digits=2) for kind, v in cpu.items()}
    log(f"  wire ({len(lab.hosts)} hosts, {secs:.0f} s): ours sends "
        f"{out['hive_tx_Bps']['median']} B/s, receives {out['hive_rx_Bps']['median']} B/s per "
        f"node; serf sends {out['serf_tx_Bps']['median']} B/s, receives "
        f"{out['serf_rx_Bps']['median']} B/s")
    for key in ("hive_tx_Bps", "hive_rx_Bps", "serf_tx_Bps", "serf_rx_Bps"):
        out[key].pop("samples", None) if len(out[key]["samples"]) > 60 else None
    return out


# --- 4. simultaneous joins ---------------------------------------------------------------------------------
def one_daemon_start(lab: Lab, host: Host, tries: int = 3) -> float | None:
    """An agent's start alone on the quiet lab (spawn -> started, about to say HELLO: stopped
    itself, frozen.py): the median of ``tries``.  What each of 100 machines started together
    spends before any hive work, on its own CPU."""
    took = []
    for _ in range(tries):
        lab.wipe_state(host)
        began = time.time()
        lab.start_ours(host, only="agent", frozen=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not lab.frozen(host):
            time.sleep(0.002)
        if lab.frozen(host):
            took.append(time.time() - began)
        lab.signal_ours(host, signal.SIGKILL, wait=0)
        lab.reap_ours(host)
    lab.wipe_state(host)
    return round(statistics.median(took), 3) if took else None


def _together(lab: Lab, base: list[Host], joiners: list[Host], frozen: bool) -> dict:
    """One round of ours: the joiners' advisors first (they advise no one until their node has
    an identity), then the agents.  frozen: each agent stops once it is started (about to say
    HELLO) and all are thawed at one moment (the time counts from then); else they start back
    to back, 200 daemons on this machine's 2 cores (the time counts from the first start)."""
    everyone = base + joiners
    for j in joiners:
        lab.wipe_state(j)
    for j in joiners:
        lab.start_ours(j, only="advisor")
    deadline = time.monotonic() + 10 + 0.2 * len(joiners)
    while time.monotonic() < deadline and not all(
            "build-advisor" in (j.dir / "advisor.log").read_text(errors="replace")[-4000:]
            for j in joiners):
        time.sleep(0.1)
    offsets = {j.index: log_size(j.dir / "agent.log") for j in joiners}
    t0 = time.time()
    for j in joiners:
        lab.start_ours(j, frozen=frozen)
    started = time.time() - t0
    out: dict = {"start_spread_s": round(started, 3)}
    if frozen:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(lab.frozen(j) for j in joiners):
            time.sleep(0.05)
        out["started_s"] = round(time.time() - t0, 3)  # all started (frozen)
        time.sleep(1)  # the machine quiet again
        t0 = lab.thaw(joiners)
    # When each identity.json was first written (the agent rewrites it moments later, once
    # its packages and role hooks are settled: the last mtime would count those too).
    first: dict[int, float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(first) < len(joiners):
        for j in joiners:
            if j.index not in first:
                mtime = j.identity_mtime()
                if mtime is not None:
                    first[j.index] = mtime
        if not any(j.running("agent") for j in joiners):
            break
        time.sleep(0.02)
    done = [first[j.index] for j in joiners if j.index in first and j.identity()]
    all_identity = (max(done) - t0) if len(done) == len(joiners) else None
    if not frozen:
        # the last agent's interpreter up (its first log line): what is left is the hive's part
        ups = [first_log_time(j.dir / "agent.log", offsets[j.index], "build-agent")
               for j in joiners]
        ups = [u for u in ups if u is not None]
        out["last_agent_up_s"] = round(max(ups) - t0, 3) if len(ups) == len(joiners) else None
    roles = collections.Counter((j.identity() or {}).get("role", "(none)") for j in joiners)
    converged = wait_ours_converged(everyone, 30)
    conv_s = time.time() - t0 if converged else None
    out.update({"all_identity_s": round(all_identity, 3) if all_identity else None,
                "all_listed_s": round(conv_s, 3) if conv_s else None,
                "roles": dict(sorted(roles.items())),
                "identity_s": sorted(round(m - t0, 2) for m in done)})
    for j in joiners:
        lab.signal_ours(j, signal.SIGTERM, wait=0)
    for j in joiners:
        lab.reap_ours(j)
        lab.wipe_state(j)
    wait_ours_gone(base, joiners, 40)
    return out


def simultaneous(lab: Lab, base: list[Host], joiners: list[Host], rounds: int, log,
                 expected: dict | None = None) -> dict:
    """K joiners started together into a hive, ``rounds`` times, ours and Serf.

    Ours: each round starts the K agents frozen and thaws them at one moment (frozen.py); the
    figure is from the thaw to the last identity.json, plus one agent's start alone
    (``one_start_s``): K machines started at one moment each start their daemon on their own
    CPU.  Then one round back to back, reported as it is (K agents after K advisors
    on this machine's 2 cores, timed from the first start).  The sequential reference:
    ``expected`` (the default policy's table) if given, else the same joiners started one
    after another in the lab."""
    seed = base[0]
    everyone = base + joiners
    one_start = one_daemon_start(lab, joiners[0])
    ours_rounds = []
    for _ in range(rounds):
        ours_rounds.append(_together(lab, base, joiners, frozen=True))
        if one_start is not None and ours_rounds[-1]["all_identity_s"] is not None:
            ours_rounds[-1]["with_start_s"] = round(ours_rounds[-1]["all_identity_s"]
                                                    + one_start, 3)
    back_to_back = _together(lab, base, joiners, frozen=False)
    # Serf: the same 20 agents started together into the 5
    serf_rounds = []
    for _ in range(rounds):
        t0 = time.time()
        for j in joiners:
            lab.start_serf(j, seed, fresh=True)
        ok = wait_serf_converged(lab, everyone, 60)
        took = time.time() - t0
        serf_rounds.append({"all_see_all_s": round(took, 3) if ok else None})
        if not ok or took > 5:  # say why: Serf's own warnings (e.g. a failed first join attempt)
            serf_rounds[-1]["serf_log"] = {j.name: log_tail(j.dir / "serf.log") for j in joiners
                                           if log_tail(j.dir / "serf.log")}
        for j in joiners:
            lab.signal_serf(j, signal.SIGINT, wait=0)
        for j in joiners:
            lab.reap_serf(j)
        wait_serf_gone(lab, base, joiners, 30)
    # the sequential reference: the same joiners, one after another (or the policy's table)
    seq_roles = collections.Counter(expected or {})
    seq_join = []
    for j in (joiners if expected is None else []):
        lab.wipe_state(j)
        lab.start_ours(j)
        seq_join.append(wait_identity(j, 30))
        seq_roles[(j.identity() or {}).get("role", "(none)")] += 1
    base_roles = collections.Counter((b.identity() or {}).get("role", "(none)") for b in base)
    sequential = dict(sorted(seq_roles.items()))
    out = {"base": len(base), "joiners": len(joiners),
           "base_roles": dict(sorted(base_roles.items())),
           "ours": ours_rounds,
           "one_start_s": one_start,
           "ours_all_identity_s": stats([r.get("with_start_s") for r in ours_rounds]),
           "ours_after_thaw_s": stats([r["all_identity_s"] for r in ours_rounds]),
           "back_to_back": back_to_back,
           "sequential_roles": sequential,
           "sequential_from": "the default policy's table" if expected is not None
                              else "the same joiners one after another in the lab",
           "sequential_join_s": stats(seq_join),
           "roles_match": all(r["roles"] == sequential for r in ours_rounds + [back_to_back]),
           "serf": serf_rounds,
           "serf_all_see_all_s": stats([r["all_see_all_s"] for r in serf_rounds])}
    log(f"  simultaneous {len(joiners)} into {len(base)}: ours all identified "
        f"{fmt(out['ours_all_identity_s'])} (thawed together: {fmt(out['ours_after_thaw_s'])} "
        f"+ one agent's start alone {one_start} s; back to back from the first start: "
        f"{back_to_back['all_identity_s']} s), roles "
        f"{[r['roles'] for r in ours_rounds + [back_to_back]]} vs "
        f"sequential {sequential} -> {'match' if out['roles_match'] else 'MISMATCH'}; "
        f"serf all see all {fmt(out['serf_all_see_all_s'])}")
    for j in joiners:  # leave the lab quiet
        lab.signal_ours(j, signal.SIGTERM, wait=0)
    for j in joiners:
        lab.reap_ours(j)
    return out


# --- 5. under attack ----------------------------------------------------------------------------------------
def udp_drops(lab: Lab, hosts: list[Host], port: int = 50555) -> dict[int, int]:
    """Datagrams the kernel dropped on full receive buffers of sockets on port, per host."""
    out = {}
    for h in hosts:
        try:
            text = subprocess.run(["ip", "netns", "exec", h.ns, "cat", "/proc/net/udp"],
                                  capture_output=True, text=True, timeout=10).stdout
        except subprocess.TimeoutExpired:
            continue
        total = 0
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 13 and cols[1].endswith(f":{port:04X}"):
                total += int(cols[-1])
        out[h.index] = total
    return out


class Sniffer:
    """Collects real signed datagrams broadcast in the lab (from a host running no daemon)."""

    def __init__(self, host: Host, port: int = 50555, limit: int = 400) -> None:
        self.sock = socket_in(host.ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("", port))
        self.sock.setblocking(False)
        self.limit = limit
        self.seen: dict[bytes, None] = {}

    def drain(self) -> None:
        for _ in range(10000):
            try:
                data = self.sock.recv(9000)
            except (BlockingIOError, InterruptedError):
                return
            if len(self.seen) < self.limit:
                self.seen[data] = None

    def close(self) -> None:
        self.sock.close()


def attack(lab: Lab, base: list[Host], joiner: Host, attacker: Host, baseline: int, rounds: int,
           rate: int, seconds: float, python: str, log) -> dict:
    """Join time unflooded, then while flooded: variant 'broadcast' hits every daemon of every
    host (the lab's broadcast address); variant 'unicast' hits the joining node's address only."""
    sniffer = Sniffer(attacker)
    try:
        unflooded = []
        for _ in range(baseline):
            unflooded.append(join_ours_once(lab, joiner, base))
            sniffer.drain()
        # the base's own heartbeats, too: wait for at least one round of them if we have few
        deadline = time.monotonic() + 12
        while len(sniffer.seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
            sniffer.drain()
        captured = list(sniffer.seen)
    finally:
        sniffer.close()
    fd, cap_path = tempfile.mkstemp(prefix="hive-bench-captured-", suffix=".hex")
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(d.hex() for d in captured) + "\n")
    watched = [(h, k) for h in base for k in ("agent", "advisor")]
    pids = {(h.index, k): h.pid(k) for h, k in watched}
    rss_before = {key: rss_mb(pid) for key, pid in pids.items() if pid}
    drops_before = udp_drops(lab, base)
    unf = stats([r["join"] for r in unflooded])
    crashed: list[str] = [c for r in unflooded for c in r["crashed"]]
    variants = []
    try:
        for name, target in (("broadcast", lab.broadcast), ("unicast", joiner.ip)):
            flooded, floods, cpu_rounds = [], [], []
            for _ in range(rounds):
                cpu0 = {key: cpu_seconds(pid) for key, pid in pids.items() if pid}
                argv = ["ip", "netns", "exec", attacker.ns, python, "-m", "hivebench.flood",
                        "--target", target, "--subnet", lab.subnet, "--rate", str(rate),
                        "--duration", f"{seconds:g}", "--captured", cap_path]
                t0 = time.monotonic()
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
                                        start_new_session=True)
                try:
                    time.sleep(min(1.0, seconds / 4))
                    flooded.append(join_ours_once(lab, joiner, base, timeout=max(30, seconds + 10)))
                    try:
                        stdout, stderr = proc.communicate(timeout=seconds + 15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        stdout, stderr = proc.communicate(timeout=5)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=5)
                window = time.monotonic() - t0
                try:
                    floods.append(json.loads(stdout.strip().splitlines()[-1]))
                except (ValueError, IndexError):
                    floods.append({"error": (stderr or stdout).strip()[-300:]})
                cpu = collections.defaultdict(list)
                for (index, kind), pid in pids.items():
                    end = cpu_seconds(pid) if pid else None
                    if end is None or cpu0.get((index, kind)) is None:
                        continue
                    cpu[kind].append(100 * (end - cpu0[(index, kind)]) / window)
                cpu_rounds.append({k: stats(v, digits=1) for k, v in cpu.items()})
                crashed += flooded[-1]["crashed"]
                for h, kind in watched:
                    if not h.running(kind):
                        note = f"{h.name}/{kind} (exit {h.procs[kind].returncode})"
                        if note not in crashed:
                            crashed.append(note)
            fl = stats([r["join"] for r in flooded])
            sent = sum(f.get("sent", 0) for f in floods)
            secs = sum(f.get("seconds", 0) for f in floods)
            variants.append({
                "name": name, "target": f"{target}:50555",
                "hits": "every daemon of every host" if name == "broadcast"
                        else "the joining node only",
                "rounds": rounds, "floods": floods, "datagrams_sent": sent,
                "achieved_rate_per_s": round(sent / secs) if secs else None,
                "flooded_join_s": fl,
                "flooded_converge_s": stats([r["converge"] for r in flooded]),
                # the interpreter's start-up (to the agent's first log line): on the lab's
                # shared cores the flood slows every new process, before the hive is involved
                "flooded_startup_s": stats([r["startup"] for r in flooded]),
                "flooded_roles": [r["role"] for r in flooded],
                "ratio_median": round(fl["median"] / unf["median"], 2)
                                if fl["median"] and unf["median"] else None,
                "base_daemon_cpu_percent": cpu_rounds})
            log(f"  attack, {name} to {target} ({rate}/s asked, {variants[-1]['achieved_rate_per_s']}"
                f"/s sent, {seconds:g} s x {rounds}): join {fmt(unf)} -> {fmt(fl)} "
                f"(x{variants[-1]['ratio_median']})")
    finally:
        os.unlink(cap_path)
    drops_after = udp_drops(lab, base)
    rss_after = {key: rss_mb(pid) for key, pid in pids.items() if pid}
    rss_growth = [rss_after[k][0] - rss_before[k][0] for k in rss_before if rss_after.get(k)]
    dropped = sum(drops_after.get(i, 0) - drops_before.get(i, 0) for i in drops_after)
    bcast_sent = variants[0]["datagrams_sent"] if variants else 0
    out = {"base": len(base), "rate_per_s": rate, "seconds": seconds, "rounds": rounds,
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "captured_datagrams": len(captured),
           "unflooded_join_s": unf,
           "unflooded_converge_s": stats([r["converge"] for r in unflooded]),
           "unflooded_startup_s": stats([r["startup"] for r in unflooded]),
           "variants": variants,
           "kernel_drops_on_50555": dropped,
           "received_per_daemon_estimate": round(
               (bcast_sent * 2 * len(base) - dropped) / (2 * len(base))),
           "rss_before_mb": stats([v[0] for v in rss_before.values()], digits=1),
           "rss_after_mb": stats([v[0] for v in rss_after.values() if v], digits=1),
           "rss_growth_mb": stats(rss_growth, digits=2),
           "crashed": crashed}
    log(f"  attack: crashed: {crashed or 'none'}; RSS growth max {out['rss_growth_mb']['max']} MB "
        f"after ~{out['received_per_daemon_estimate']} datagrams received per daemon")
    return out


def fmt(s: dict) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    text = f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g}, n={s['n']})"
    if s.get("timeouts"):
        text += f" +{s['timeouts']} timeout(s)"
    return text
