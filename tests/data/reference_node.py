"""A node of the reference scripts, for mixed-hive tests: it heartbeats as kind HEARTBEAT with an
``identity`` object and no ``interval`` (the reference scripts send one about every 32 s).

Usage (inside a lab host): python3 reference_node.py SECRET_FILE BROADCAST HOSTNAME IP COUNT PERIOD
Sends COUNT heartbeats, PERIOD seconds apart (bounded: at most 100, at most 10 minutes in all).
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent import protocol  # noqa: E402

secret_file, broadcast, hostname, ip = sys.argv[1:5]
count, period = min(int(sys.argv[5]), 100), float(sys.argv[6])
secret = open(secret_file, "rb").read().splitlines()[0].strip()
node_id = "reference-" + hostname
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
deadline = time.monotonic() + 600
for i in range(count):
    payload = {"kind": "HEARTBEAT", "node_id": node_id, "hostname": hostname, "primary_ip": ip,
               "identity": {"role": "runner", "packages": ["python3-pytest"]},
               "ts": protocol.format_ts(time.time())}
    sock.sendto(protocol.encode(payload, secret), (broadcast, 50555))
    if i + 1 < count and time.monotonic() + period < deadline:
        time.sleep(period)
print("sent", count, flush=True)
