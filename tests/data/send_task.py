"""Send one TASK datagram to a lab host, as a given sender, or replay saved bytes.

Usage (inside a lab host):
  python3 send_task.py TARGET_IP SECRET_FILE SENDER_NODE_ID SENDER_HOSTNAME SENDER_IP TO_NODE_ID
                       TASK_ID ATTEMPT [--wrong-secret] [--save FILE] -- ARGV...
  python3 send_task.py --replay FILE TARGET_IP
Prints one JSON line: what was sent.
"""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent import protocol  # noqa: E402


def send(data: bytes, target: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(data, (target, protocol.DEFAULT_PORT))
    sock.close()


def main(argv: list[str]) -> int:
    import argparse
    if argv[0] == "--replay":
        data = open(argv[1], "rb").read()
        send(data, argv[2])
        print(json.dumps({"replayed": len(data)}))
        return 0
    parser = argparse.ArgumentParser()
    for name in ("target", "secret_file", "node_id", "hostname", "ip", "to", "task_id"):
        parser.add_argument(name)
    parser.add_argument("attempt", type=int)
    parser.add_argument("--wrong-secret", action="store_true")
    parser.add_argument("--save")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    secret = b"not-the-hive-secret-at-all" if args.wrong_secret else \
        open(args.secret_file, "rb").read().splitlines()[0].strip()
    payload = protocol.make_payload("TASK", args.node_id, args.hostname, args.ip, time.time(),
                                    id=args.task_id, to=args.to, attempt=args.attempt,
                                    argv=command, role=None, timeout=60)
    data = protocol.encode(payload, secret)
    send(data, args.target)
    if args.save:
        with open(args.save, "wb") as handle:
            handle.write(data)
    print(json.dumps({"sent": args.task_id, "to": args.to, "from": args.node_id,
                      "forged": args.wrong_secret}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
