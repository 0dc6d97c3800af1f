"""The measurements of issue 12's goals that need a lab of their own: a big hive (200 hosts on
one machine), false deaths under datagram loss, and the role counts one-after-another joins
would give (the expectation a mass join is held to).

Each takes a running Lab and returns plain data for the JSON report, like phases.py.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time

from build_advisor.policy import default_suggest_role

from . import chaos, loss
from .lab import Host, Lab, log_size, rss_mb
from .phases import (failures, footprint, join_series, settle, wait_identity,
                     wait_ours_converged, wait_serf_converged, wire_cost)

SERF_UDP = 7946


# --- the sequential expectation ---------------------------------------------------------------
def sequential_counts(size: int) -> dict[str, int]:
    """Role counts of a hive of ``size`` nodes that joined one after another under the default
    policy: the founder, then every other node advised by those before it (plan.replay)."""
    members = [{"node_id": f"n{i:04d}", "hostname": f"build{i + 1}", "joined_at": float(i),
                "role": "founder" if i == 0 else "member"} for i in range(size)]
    return chaos.table_counts(members, default_suggest_role)


def joiner_counts(base: int, joiners: int) -> dict[str, int]:
    """The roles ``joiners`` nodes take, one after another, after a hive of ``base`` formed so."""
    whole = collections.Counter(sequential_counts(base + joiners))
    whole.subtract(sequential_counts(base))
    return {r: n for r, n in sorted(whole.items()) if n > 0}


def role_counts(hosts: list[Host]) -> dict[str, int]:
    return dict(sorted(collections.Counter((h.identity() or {}).get("role", "(none)")
                                           for h in hosts).items()))


# --- forming a hive one host after another, timed ------------------------------------------------
def form(lab: Lab, hosts: list[Host], seed: Host, log, every: int = 25,
         give_up_after: int = 3, limit_s: float = 1200) -> dict:
    """Start hosts one after another (each waits for its identity), Serf beside each; returns
    each join's time (agent start -> identity.json) by hive size, and the whole formation's.
    Stops early ("stopped": why) after ``give_up_after`` joins in a row without an identity or
    after ``limit_s``: a hive that no longer keeps up must not go on loading the machine."""
    t0 = time.monotonic()
    joins: list = []
    stopped = None
    for n, host in enumerate(hosts, 1):
        lab.start_ours(host)
        joins.append(wait_identity(host, 30))
        if joins[-1] is None:
            log(f"  warning: {host.name} has no identity after 30 s (see {host.dir}/agent.log)")
        lab.start_serf(host, seed if host is not seed else None, fresh=bool(host.serf_name))
        if n % every == 0:
            log(f"  formed {n} of {len(hosts)} ({time.monotonic() - t0:.0f} s); last join "
                f"{joins[-1] if joins[-1] is None else round(joins[-1], 2)} s; load average "
                f"{os.getloadavg()[0]:.0f}")
        if len(joins) >= give_up_after and all(j is None for j in joins[-give_up_after:]):
            stopped = f"{give_up_after} joins in a row got no identity within 30 s"
        elif time.monotonic() - t0 > limit_s:
            stopped = f"forming took more than {limit_s:.0f} s"
        if stopped:
            log(f"  stopping the formation at {n} of {len(hosts)} hosts: {stopped} "
                f"(load average {os.getloadavg()[0]:.0f})")
            break
    return {"formation_s": round(time.monotonic() - t0, 1), "join_s_by_size": [
        round(j, 3) if j is not None else None for j in joins], "stopped": stopped,
        "started": len(joins), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def all_list(hosts: list[Host]) -> dict:
    """How many live members every running agent's peers.json lists (besides itself)."""
    counts = [len(h.alive_peers() - {h.name}) for h in hosts if h.running("agent")]
    return {"min": min(counts, default=0), "max": max(counts, default=0),
            "agents": len(counts), "all_list_the_others": bool(counts) and min(counts) == len(counts) - 1}


def neighbour_overflows() -> int | None:
    """'neighbor table overflow' lines in the kernel log so far (None if it cannot be read)."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.count("neighbor table overflow")


def memory_available_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 1024, 0)
    except (OSError, ValueError):
        pass
    return None


# --- a big hive ----------------------------------------------------------------------------------
def scale(lab: Lab, hosts: list[Host], samples: int, idle_seconds: float, wire_seconds: float,
          add_seconds: float, log, form_limit: float = 1200) -> dict:
    """A hive of len(hosts) on one machine, ours and Serf side by side: form it one after another;
    join, convergence and leave at full size; every peers.json lists the others; the role counts
    against the sequential expectation; idle CPU and RSS per daemon; wire cost per node; a
    kill -9 of one of ours and one Serf agent until every member lists it dead."""
    size = len(hosts)
    seed = hosts[0]
    out: dict = {"hosts": size, "heartbeat_s": lab.heartbeat, "lab_add_s": round(add_seconds, 1),
                 "memory_available_mb_before": memory_available_mb(),
                 "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    overflows0 = neighbour_overflows()
    log(f"  forming {size - 1} hosts one after another (ours + Serf on each)")
    out["form"] = form(lab, hosts[:-1], seed, log, limit_s=form_limit)
    if out["form"]["stopped"]:
        out["crashed"] = [f"{h.name}/{k} (exit {h.procs[k].returncode})" for h in hosts
                          for k in ("agent", "advisor") if k in h.procs and not h.running(k)]
        out["with_identity"] = sum(1 for h in hosts if h.identity())
        out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return out
    t0 = time.monotonic()
    ours_ok = wait_ours_converged(hosts[:-1], 120)
    out["ours_settle_s"] = round(time.monotonic() - t0, 1) if ours_ok else None
    t0 = time.monotonic()
    serf_ok = wait_serf_converged(lab, hosts[:-1], 180)
    out["serf_settle_s"] = round(time.monotonic() - t0, 1) if serf_ok else None
    log(f"  formed in {out['form']['formation_s']} s; every peers.json complete after "
        f"{out['ours_settle_s']} s more, Serf after {out['serf_settle_s']} s")
    log(f"  join, convergence and leave at {size} hosts, {samples} samples each")
    out["join"] = join_series(lab, hosts[-1], hosts[:-1], seed, samples, log)
    last = form(lab, [hosts[-1]], seed, log)
    out["form"]["join_s_by_size"] += last["join_s_by_size"]
    settle(lab, hosts, log)
    time.sleep(3)
    out["peers_listed"] = all_list(hosts)
    out["roles"] = role_counts(hosts)
    out["sequential_roles"] = sequential_counts(size)
    out["roles_match"] = out["roles"] == out["sequential_roles"]
    log(f"  every peers.json lists {out['peers_listed']['min']}-{out['peers_listed']['max']} "
        f"others; roles {out['roles']} vs sequential {out['sequential_roles']} -> "
        f"{'match' if out['roles_match'] else 'MISMATCH'}")
    log(f"  idle for {idle_seconds:g} s: CPU and RSS per daemon")
    out["footprint"] = footprint(lab, idle_seconds, log)
    procs = lab.daemons()
    total = collections.defaultdict(float)
    for _, kind, pid in procs:
        mem = rss_mb(pid)
        if mem:
            total[kind] += mem[0]
    out["total_rss_mb"] = {k: round(v) for k, v in total.items()}
    out["memory_available_mb_formed"] = memory_available_mb()
    log(f"  wire cost at rest for {wire_seconds:g} s")
    out["wire"] = wire_cost(lab, wire_seconds, log)
    log("  kill -9 of one of our nodes and of another node's Serf agent, at the same instant")
    out["failure"] = failures(lab, hosts, seed, 1, 1, lab.heartbeat, False, True, log)
    out["peers_listed_after"] = all_list(hosts)
    overflows1 = neighbour_overflows()
    out["neighbour_table_overflows"] = (overflows1 - overflows0
                                        if overflows0 is not None and overflows1 is not None else None)
    out["crashed"] = [f"{h.name}/{k} (exit {h.procs[k].returncode})" for h in hosts
                      for k in ("agent", "advisor") if k in h.procs and not h.running(k)]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


# --- false deaths under loss -------------------------------------------------------------------------
def false_positives(lab: Lab, hosts: list[Host], percent: int, seconds: float, log,
                    poll: float = 0.5) -> dict:
    """Every host drops ``percent`` % of the hive's (and Serf's UDP) datagrams it receives, at
    random; nobody is killed.  For ``seconds``, every member's view is read every ``poll``
    seconds: a live member missing from another's peers.json (ours) or not 'alive' in another's
    Serf member list is a false death, counted once per (observer, member) episode.  The
    agents' 'is dead' log lines are counted too."""
    names = {h.name for h in hosts}
    serf_names = {h.serf_name for h in hosts}
    offsets = {h.index: log_size(h.dir / "agent.log") for h in hosts}
    for h in hosts:
        loss.add_loss(h.ns, percent, ports=(loss.HIVE_PORT, SERF_UDP))
    ours_down: set = set()
    serf_down: set = set()
    ours_episodes: list = []
    serf_episodes: list = []
    t0 = time.monotonic()
    deadline = t0 + seconds
    rounds = 0
    try:
        while time.monotonic() < deadline:
            at = round(time.monotonic() - t0, 1)
            rounds += 1
            for h in hosts:
                if h.running("agent"):
                    for missing in names - {h.name} - h.alive_peers():
                        if (h.name, missing) not in ours_down:
                            ours_down.add((h.name, missing))
                            ours_episodes.append((at, h.name, missing))
                    ours_down -= {(h.name, m) for m in h.alive_peers()}
                alive = lab.serf_alive(h)
                if alive is not None:
                    for missing in serf_names - {h.serf_name} - alive:
                        if (h.serf_name, missing) not in serf_down:
                            serf_down.add((h.serf_name, missing))
                            serf_episodes.append((at, h.serf_name, missing))
                    serf_down -= {(h.serf_name, m) for m in alive}
            time.sleep(poll)
    finally:
        counted = [loss.counters(h.ns) for h in hosts]
        for h in hosts:
            subprocess.run(["ip", "netns", "exec", h.ns, "nft", "delete", "table", "inet",
                            loss.TABLE], capture_output=True, timeout=15)
    deaths = []
    for h in hosts:
        try:
            with open(h.dir / "agent.log", "rb") as handle:
                handle.seek(offsets[h.index])
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        deaths += [(h.name, who) for _, who in chaos.deaths_from_log(text)]
    seen = sum(c[0] for c in counted if c)
    dropped = sum(c[1] for c in counted if c)
    crashed = [f"{h.name}/{k} (exit {h.procs[k].returncode})" for h in hosts
               for k in ("agent", "advisor", "serf") if k in h.procs and not h.running(k)]
    out = {"hosts": len(hosts), "heartbeat_s": lab.heartbeat, "loss_percent": percent,
           "seconds": round(time.monotonic() - t0, 1), "poll_s": poll, "polls": rounds,
           "datagrams_seen": seen, "datagrams_dropped": dropped,
           "dropped_share": round(dropped / seen, 4) if seen else None,
           "ours_false_deaths": len(ours_episodes),
           "ours_falsely_dead_members": len({m for _, _, m in ours_episodes}),
           "ours_dead_log_lines": len(deaths),
           "serf_false_deaths": len(serf_episodes),
           "serf_falsely_dead_members": len({m for _, _, m in serf_episodes}),
           "ours_episodes": ours_episodes[:50], "serf_episodes": serf_episodes[:50],
           "crashed": crashed}
    log(f"  {percent} % loss for {out['seconds']:g} s ({dropped} of {seen} datagrams dropped): "
        f"ours {out['ours_false_deaths']} false death(s) ({len(deaths)} 'is dead' log lines), "
        f"Serf {out['serf_false_deaths']}; crashed: {crashed or 'none'}")
    return out
