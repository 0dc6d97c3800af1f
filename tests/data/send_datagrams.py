"""Send a bounded burst of bad datagrams (and one valid message plus its replay) to a lab host.

Usage (inside a lab host): python3 send_datagrams.py TARGET_IP SECRET_FILE COUNT
Prints one JSON line: how many datagrams of each sort were sent.
"""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent import protocol  # noqa: E402

target, secret_file, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
secret = open(secret_file, "rb").read().splitlines()[0].strip()
now = time.time()
good = protocol.make_payload("STATUS", "intruder-0001", "intruder", "10.0.0.1", now,
                             role="builder", state="active", interval=1.0)
valid = protocol.encode(good, secret)
stale = protocol.encode(protocol.make_payload("STATUS", "intruder-0002", "intruder", "10.0.0.1",
                                              now - 3600, role="builder"), secret)
# A forgery newer than the valid message (an older one is refused as a replay before its
# signature is even checked).
unsigned = protocol.encode(protocol.make_payload("STATUS", "intruder-0001", "intruder", "10.0.0.1",
                                                 now + 1, role="builder", state="active",
                                                 interval=1.0), b"not-the-hive-secret-at-all")
samples = {
    "garbage": os.urandom(200),
    "oversized": b"{" + b" " * 9000 + b"}",
    "non_utf8": b"\xff\xfe" * 50,
    "wrong_magic": valid.replace(b"BUILD/HELLO/v1", b"BUILD/HELLO/v9"),
    "bad_signature": unsigned,
    "stale": stale,
    "truncated": valid[: len(valid) // 2],
    "replayed": valid,
}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sent = {name: 0 for name in samples}
sock.sendto(valid, (target, 50555))  # the original; every later copy is a replay
deadline = time.monotonic() + 20
for i in range(count):
    if time.monotonic() > deadline:
        break
    name = list(samples)[i % len(samples)]
    try:
        sock.sendto(samples[name], (target, 50555))
        sent[name] += 1
    except OSError:
        pass
print(json.dumps(sent))
