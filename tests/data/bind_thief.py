"""Try to take the hive's port the ways a local, unprivileged process could.

Usage (inside a lab host, as any user): python3 bind_thief.py NODE_IP [PORT]
Prints one JSON object: for each attempt, "bound" or the error.
"""

import json
import socket
import sys

ip = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 50555
attempts = {
    "unicast+SO_REUSEADDR": (ip, socket.SO_REUSEADDR),
    "unicast+SO_REUSEPORT": (ip, socket.SO_REUSEPORT),
    "unicast": (ip, None),
    "wildcard+SO_REUSEADDR": ("", socket.SO_REUSEADDR),
    "wildcard+SO_REUSEPORT": ("", socket.SO_REUSEPORT),
}
result = {}
for name, (address, option) in attempts.items():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if option is not None:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((address, port))
        result[name] = "bound"
    except OSError as exc:
        result[name] = exc.strerror
    finally:
        sock.close()
print(json.dumps(result, sort_keys=True))
