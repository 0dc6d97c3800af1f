"""A joining node that holds the hive's queue, for mass-join tests: it says it is asking the hive
(STATUS state "asking", as a joiner in the middle of its round does), so every joiner that starts
meanwhile waits in the queue; once RELEASE_FILE exists it says it backs off (STATUS "backoff":
nobody waits for it any more) and exits.  So many joiners that a test cannot start within one
moment on a busy machine are all queued when the first of them asks.

Usage (inside a lab host): python3 queue_holder.py SECRET_FILE BROADCAST HOSTNAME IP RELEASE_FILE
Bounded: it gives up (backs off) after 90 s even if RELEASE_FILE never appears.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent import protocol  # noqa: E402

secret_file, broadcast, hostname, ip, release = sys.argv[1:6]
secret = open(secret_file, "rb").read().splitlines()[0].strip()
node_id = "queue-holder-" + hostname
since = protocol.format_ts(time.time() - 60)  # ahead of every joiner
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.bind(("", 50555))  # (this host runs no daemon)
sock.settimeout(0.05)


def send(kind: str, address: str, **fields) -> None:
    payload = protocol.make_payload(kind, node_id, hostname, ip, time.time(), **fields)
    sock.sendto(protocol.encode(payload, secret), (address, 50555))
    time.sleep(0.001)  # strictly increasing stamps (receivers refuse an older or equal one)


deadline = time.monotonic() + 90
next_status = 0.0
while not os.path.exists(release) and time.monotonic() < deadline:
    if time.monotonic() >= next_status:
        send("STATUS", broadcast, role=None, state="asking", joining_since=since)
        next_status = time.monotonic() + 0.2
    try:
        data, source = sock.recvfrom(protocol.MAX_DATAGRAM + 1)
        message = protocol.decode(data, [secret], time.time())
    except (socket.timeout, protocol.ProtocolError):
        continue
    if message.kind == "HELLO" and not message.get("role"):
        # Answered as a joiner answers: so a newcomer knows of us before its discovery ends.
        send("WELCOME", source[0], to=message.node_id, role=None, members=0,
             joining_since=since)
for _ in range(3):
    send("STATUS", broadcast, role=None, state="backoff", joining_since=since)
    time.sleep(0.05)
print("released", flush=True)
