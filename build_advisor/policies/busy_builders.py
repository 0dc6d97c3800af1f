"""Example policy: the seed's "build queue is long, need builders", written as a policy.

The default table (controller, builder, builder, then runners) is kept for newcomers; for healing,
``desired_roles`` asks for one more builder while the builders stay busy, and gives it back once
they are idle again.  "Stay busy" is the builders' 15-minute load average per core (each
member's STATUS carries ``load`` and ``capacity``), so one busy minute moves nobody.  Two
thresholds (hysteresis) keep it calm: an extra builder is wanted above BUSY and kept until the
load falls below IDLE, so the plan cannot flip back and forth at one value.

Use it with `policy = "/opt/build-agent/build_advisor/policies/busy_builders.py"` in hive.toml
on every node (copied somewhere root owns, mode 0644, if you edit it).
"""

from build_advisor.policy import default_suggest_role

BUSY = 0.8        # builders' 15-min load per core above this: want one more builder
IDLE = 0.3        # ... kept until it falls below this
BASE_BUILDERS = 2  # the default table's builders
MAX_BUILDERS = 6


def suggest_role(view, newcomer):
    return default_suggest_role(view, newcomer)


def _load_per_core(member):
    load = member.get("load")
    cores = (member.get("capacity") or {}).get("cpu_cores") or \
        (member.get("capabilities") or {}).get("cpu_cores") or 1
    if isinstance(load, list) and len(load) >= 3:
        return load[2] / cores
    return None


def desired_roles(view):
    members = view["members"]
    builders = [m for m in members if m["role"] == "builder"]
    loads = [x for x in map(_load_per_core, builders) if x is not None]
    busy = sum(loads) / len(loads) if loads else 0.0
    want = max(BASE_BUILDERS, len(builders)) if busy >= IDLE else BASE_BUILDERS
    if busy > BUSY and len(builders) >= want:
        want = len(builders) + 1
    others = len(members) - sum(1 for m in members if m["role"] == "founder")
    controllers = 1 if others >= 1 else 0
    want = max(0, min(want, MAX_BUILDERS, others - controllers))
    return {"controller": controllers, "builder": want, "runner": "rest"}
