"""Watching a lab hive heal: is it settled at the table's counts, and how long does a heal take.

Used by scripts/hive-chaos (both modes).  A set of live hosts has *settled* when every live
agent runs and has an identity, their role counts are the table's (``chaos.table_counts``) and
no role changed for a quiet period, in which every live host's peers.json listed exactly the
other live hosts, each with the role in that host's own identity.json, at least once.  Every
wait is bounded.
"""

from __future__ import annotations

import calendar
import signal
import statistics
import time

from . import chaos
from .lab import Host, Lab, read_json

POLL = 0.01  # seconds between two looks in a timed measurement


class FileViews:
    """Roles and peers read straight from the state files at every call (for timings)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def role(self, host: int) -> str | None:
        data = read_json(self.lab.hosts[host].state / "identity.json")
        return data.get("role") if isinstance(data, dict) else None

    def peers_roles(self, host: int) -> dict[str, str] | None:
        data = read_json(self.lab.hosts[host].state / "peers.json")
        peers = data.get("peers") if isinstance(data, dict) else None
        if not isinstance(peers, list):
            return None
        return {p.get("hostname"): p.get("role") for p in peers
                if isinstance(p, dict) and p.get("status", "alive") == "alive"}


def member_views(lab: Lab, live: list[int], roles: dict[int, str | None]) -> list[dict]:
    """Policy-view member dicts for the live hosts (join order: host number; hive-lab and the
    chaos run join hosts one after another in that order)."""
    return [{"node_id": f"h{h:04d}", "hostname": lab.hosts[h].name, "role": roles.get(h),
             "joined_at": float(h), "ip": lab.hosts[h].ip, "capabilities": {}} for h in live]


def check(lab: Lab, live: list[int], views, suggest) -> dict:
    """Whether the live hosts have the table's counts (``roles_ok``: every agent runs and has
    an identity, the counts are the table's) and whether their views agree (``views_ok``: each
    peers.json lists exactly the other live hosts, with the roles in their identity.json)."""
    roles = {h: views.role(h) for h in live}
    counts = chaos.role_counts(roles.values())
    wanted = chaos.table_counts(member_views(lab, live, roles), suggest) \
        if all(roles.values()) else {}
    why = views_why = ""
    not_running = [lab.hosts[h].name for h in live if not lab.hosts[h].running("agent")]
    if not_running:
        why = "agent not running on " + ", ".join(not_running)
    elif not all(roles.values()):
        why = "no identity yet on " + ", ".join(lab.hosts[h].name for h in live if not roles[h])
    elif counts != wanted:
        why = f"roles {fmt_counts(counts)}, the table wants {fmt_counts(wanted)}"
    if not not_running and all(roles.values()):
        names = {lab.hosts[h].name: roles[h] for h in live}
        for h in live:
            seen = views.peers_roles(h)
            expect = {n: r for n, r in names.items() if n != lab.hosts[h].name}
            if seen != expect:
                extra = sorted(set(seen or {}) - set(expect))
                lacking = sorted(set(expect) - set(seen or {}))
                wrong = sorted(n for n in set(expect) & set(seen or {}) if seen[n] != expect[n])
                views_why = (f"{lab.hosts[h].name}'s peers.json: "
                             + "; ".join(x for x in (
                                 f"still lists {', '.join(extra)}" if extra else "",
                                 f"lacks {', '.join(lacking)}" if lacking else "",
                                 f"old roles for {', '.join(wrong)}" if wrong else "",
                                 "not read yet" if seen is None else "") if x))
                break
    else:
        views_why = why
    return {"roles_ok": not why, "views_ok": not views_why, "why": why, "views_why": views_why,
            "roles": roles, "counts": counts, "wanted": wanted}


def wait_settled(lab: Lab, live: list[int], views, suggest, quiet: float, timeout: float,
                 poll: float = 0.1, tick=None) -> dict:
    """Wait (at most ``timeout`` s) until the live hosts have the table's counts with no role
    changing for ``quiet`` s, and every view (peers.json) agreed with them at least once in that
    time.  (Views must not have to agree for the whole quiet period: under datagram loss a
    member may drop a live peer for one heartbeat.)  ``seconds``: from the call to the last
    role change (the start of the quiet period); ``views_agreed_s``: to the first agreement."""
    start = time.monotonic()
    stable_since = agreed_at = None
    last_roles = None
    while True:
        now = time.monotonic()
        state = check(lab, live, views, suggest)
        if state["roles_ok"]:
            if stable_since is None or state["roles"] != last_roles:
                stable_since, agreed_at = now, None
            if agreed_at is None and state["views_ok"]:
                agreed_at = now
            if now - stable_since >= quiet and agreed_at is not None:
                return {"settled": True, "seconds": round(stable_since - start, 2),
                        "views_agreed_s": round(agreed_at - start, 2),
                        "counts": state["counts"], "wanted": state["wanted"], "why": ""}
        else:
            stable_since = agreed_at = None
        last_roles = state["roles"]
        if now - start >= timeout:
            if not state["roles_ok"]:
                why = state["why"]
            elif agreed_at is None:
                why = f"the views never agreed: {state['views_why']}"
            else:
                why = f"not quiet for {quiet:g} s (roles kept changing)"
            return {"settled": False, "seconds": None, "views_agreed_s": None,
                    "counts": state["counts"], "wanted": state["wanted"], "why": why}
        if tick is not None:
            tick()
        time.sleep(poll)


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "none"


# --- heal time: kill -9 the controller, until a new one is everywhere ------------------------------
def role_since(identity: dict | None) -> float | None:
    """When a member took its role (changed_at, else assigned_at), as the plan's cool-down
    counts it; seconds since the epoch."""
    if not isinstance(identity, dict):
        return None
    text = identity.get("changed_at") or identity.get("assigned_at")
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def wait_mover_free(lab: Lab, indices: list[int], role: str, cooldown: float,
                    timeout: float) -> float:
    """Wait until some live member holding ``role`` took it at least ``cooldown`` s ago (it may
    move: the plan's cool-down does not hold it), at most ``timeout`` s.  So a heal time
    measures detection, grace and consensus, not a cool-down left over from the last round.
    Returns the seconds waited."""
    start = time.monotonic()
    margin = 1.5  # the stamps are whole seconds
    while time.monotonic() - start < timeout:
        ages = [time.time() - since for h in indices if lab.hosts[h].running("agent")
                for identity in [read_json(lab.hosts[h].state / "identity.json")]
                if isinstance(identity, dict) and identity.get("role") == role
                for since in [role_since(identity)] if since is not None]
        if any(age >= cooldown + margin for age in ages):
            break
        time.sleep(0.1)
    return round(time.monotonic() - start, 2)


def heal_round(lab: Lab, hosts: list[Host], suggest, timeout: float,
               quiet: float, cooldown: float = 0.0, phase: float = 0.0) -> dict:
    """Kill -9 the hive's controller; seconds until a new controller's identity.json is written
    (the mover), until every live member's peers.json lists it as controller, and, after the
    old controller is started again, until the hive has settled back at the table.  First,
    wait until a runner is out of its ``cooldown`` (see wait_mover_free), then ``phase`` s more
    (the caller draws it at random within a heartbeat: a kill at a fixed time after the hive
    settled would land at a fixed point of the victim's heartbeat cycle, and detection, 2 to 3
    heartbeats after the last one, would always be measured at the same point of that range)."""
    views = FileViews(lab)
    indices = [h.index for h in hosts]
    waited = wait_mover_free(lab, indices, "runner", cooldown, cooldown + 10) if cooldown else 0.0
    time.sleep(max(0.0, phase))
    before = {h: views.role(h) for h in indices}
    controllers = [h for h in indices if before[h] == "controller" and lab.hosts[h].running("agent")]
    out: dict = {"victim": None, "mover": None, "gone_s": None, "mover_identity_s": None,
                 "everywhere_s": None, "return_settled_s": None, "moves": None,
                 "stepped_down": None, "cooldown_wait_s": waited, "phase_s": round(phase, 3),
                 "error": None}
    if len(controllers) != 1:
        out["error"] = f"{len(controllers)} controller(s) before the kill: {fmt_counts(chaos.role_counts(before.values()))}"
        return out
    victim = lab.hosts[controllers[0]]
    out["victim"] = victim.name
    live = [h for h in indices if h != victim.index]
    t_kill = lab.signal_ours(victim, signal.SIGKILL, wait=0)
    deadline = time.monotonic() + timeout
    mover = None
    while time.monotonic() < deadline:
        now = time.time()
        if out["gone_s"] is None and all(
                victim.name not in (views.peers_roles(h) or {}) for h in live):
            out["gone_s"] = round(now - t_kill, 3)
        if mover is None:
            for h in live:
                if views.role(h) == "controller":
                    mover = lab.hosts[h]
                    mtime = mover.identity_mtime()
                    took = (mtime - t_kill) if mtime is not None and mtime >= t_kill else now - t_kill
                    out["mover"], out["mover_identity_s"] = mover.name, round(took, 3)
                    break
        if mover is not None and all(
                (views.peers_roles(h) or {}).get(mover.name) == "controller"
                for h in live if h != mover.index):
            out["everywhere_s"] = round(now - t_kill, 3)
            break
        time.sleep(POLL)
    lab.reap_ours(victim)
    if out["everywhere_s"] is None:
        out["error"] = (f"no new controller everywhere within {timeout:g} s"
                        + (f" (mover {mover.name})" if mover else " (nobody moved)"))
    # the moves of this heal: the live hosts whose role changed
    after = {h: views.role(h) for h in live}
    out["moves"] = sum(1 for h in live if after[h] != before[h])
    # the old controller comes back with its old identity: one of the two controllers steps down
    t_back = time.monotonic()
    lab.start_ours(victim)
    settled = wait_settled(lab, indices, views, suggest, quiet, timeout, poll=0.05)
    if settled["settled"]:
        out["return_settled_s"] = round(settled["seconds"], 3)
        final = {h: views.role(h) for h in indices}
        out["stepped_down"] = [lab.hosts[h].name for h in indices
                               if final[h] != (after.get(h) or before[h])
                               and (after.get(h) or before[h]) == "controller"]
    elif out["error"] is None:
        out["error"] = f"not settled {timeout:g} s after the old controller returned: {settled['why']}"
    out["return_wait_s"] = round(time.monotonic() - t_back, 2)
    return out


def stats(samples: list) -> dict:
    values = [v for v in samples if v is not None]
    out = {"n": len(values), "timeouts": len(samples) - len(values)}
    if values:
        out.update(median=round(statistics.median(values), 3), min=min(values), max=max(values))
    else:
        out.update(median=None, min=None, max=None)
    out["samples"] = values
    return out


def fmt_stats(s: dict) -> str:
    if not s or s.get("median") is None:
        return "n/a" + (f" ({s['timeouts']} timeout(s))" if s and s.get("timeouts") else "")
    text = f"{s['median']:.3g} s (min {s['min']:.3g}, max {s['max']:.3g}, n={s['n']})"
    if s.get("timeouts"):
        text += f" +{s['timeouts']} timeout(s)"
    return text

