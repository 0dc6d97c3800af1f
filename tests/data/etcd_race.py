"""N nodes read the role guard's revision, then all claim at the same moment, against a real
etcd with the hive's own client (build_agent.etcd.Registry).

Usage (inside a lab host): python3 etcd_race.py URL PREFIX N
Prints one JSON object: {"results": {node_id: "ok" | "conflict" | ...}, "settled": {...}}.
"""

import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent.etcd import Registry  # noqa: E402

url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
registries, guards = [], []
for n in range(count):
    node_id = f"racer-{n}"
    reg = Registry([url], prefix, node_id, 1.0)
    reg.set_record({"node_id": node_id, "hostname": node_id, "ip": f"10.99.0.{n + 1}",
                    "port": 50555, "role": None, "joining_since": None}, joining=True)
    reg._cycle()  # registered (lease and record), as the agent's start does
    registries.append(reg)
for reg in registries:
    guards.append(reg.guard_begin())  # everyone asks "the hive" with the same revision
results = {}
barrier = threading.Barrier(count)


def claim(n):
    reg = registries[n]
    record = {"node_id": reg.node_id, "hostname": reg.node_id, "ip": f"10.99.0.{n + 1}",
              "port": 50555, "role": "controller", "joining_since": None}
    barrier.wait()
    results[reg.node_id] = reg.guard_claim(guards[n], record)


threads = [threading.Thread(target=claim, args=(n,)) for n in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(10)
after = registries[0].guard_begin()
print(json.dumps({"results": results, "revisions": sorted({g.revision for g in guards}),
                  "settled": after.last,
                  "roles": {r["node_id"]: r["role"] for r in after.records}}, sort_keys=True))
for reg in registries:
    reg.stop()
