"""The attacker of measurement 5: a bounded flood of invalid and replayed hive datagrams.

Run *inside* a lab host's namespace (``ip netns exec NS python3 -m hivebench.flood ...``); it
sends to a lab address only (the broadcast address or one host), refuses any target outside the
lab's /24, and stops after --duration seconds or rate x duration datagrams, whichever comes first
(it never catches up past the deadline: on a starved CPU it sends fewer, and says how many).  Prints one JSON
line with what it sent.

Mix: half are replays of real signed datagrams captured earlier in the lab (the replay cache or
the 300 s window must drop them), half invalid ones: tampered payload (bad signature), forged
signature, wrong magic, truncated JSON, non-UTF-8 bytes and random bytes, each one unique so no
cache can short-cut them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time

MAGIC = "BUILD/HELLO/v1"


def _invalid(rng: random.Random, captured: list[bytes], n: int) -> bytes:
    kind = n % 6
    if kind in (0, 1) and captured:
        envelope = json.loads(captured[n % len(captured)])
        payload = envelope["payload"]
        payload["hostname"] = f"evil{n}"
        if kind == 1:  # forged signature
            envelope["sig"] = os.urandom(32).hex()
        return json.dumps(envelope, separators=(",", ":")).encode()
    if kind in (0, 1):
        payload = {"kind": "HELLO", "node_id": f"evil-{n}", "hostname": f"evil{n}",
                   "primary_ip": "10.0.0.1", "ts": "2026-11-27T00:00:00.000000Z"}
        return json.dumps({"magic": MAGIC, "payload": payload, "sig": os.urandom(32).hex()},
                          separators=(",", ":")).encode()
    if kind == 2:
        return json.dumps({"magic": "BUILD/HELLO/v0", "payload": {"kind": "HELLO", "n": n},
                           "sig": "00" * 32}).encode()
    if kind == 3:
        text = json.dumps({"magic": MAGIC, "payload": {"kind": "HELLO", "n": n}, "sig": "ab" * 32})
        return text[: rng.randrange(5, len(text) - 1)].encode()
    if kind == 4:
        return b'{"magic":"' + bytes([0xFF, 0xFE, n % 256, 0xC3]) + b'"}'
    return os.urandom(rng.randrange(16, 600))


def build_pool(captured: list[bytes], size: int, seed: int = 4) -> tuple[list[bytes], int]:
    rng = random.Random(seed)
    pool, replays = [], 0
    for n in range(size):
        if captured and n % 2 == 0:
            pool.append(captured[(n // 2) % len(captured)])
            replays += 1
        else:
            pool.append(_invalid(rng, captured, n))
    return pool, replays


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True,
                        help="a lab address: its broadcast address or one host's")
    parser.add_argument("--subnet", required=True, help="the lab's /24, e.g. 10.79.0")
    parser.add_argument("--port", type=int, default=50555)
    parser.add_argument("--rate", type=int, default=10000, help="datagrams per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--captured", help="file with captured datagrams, one hex per line")
    args = parser.parse_args(argv)
    if not args.target.startswith(args.subnet + ".") or args.rate <= 0 or args.rate > 50000 \
            or not 0 < args.duration <= 60:
        print(json.dumps({"error": "refusing: target outside the lab, or rate/duration out of bounds"}))
        return 2
    captured = []
    if args.captured:
        with open(args.captured, encoding="ascii") as handle:
            captured = [bytes.fromhex(line.strip()) for line in handle if line.strip()][:500]
    pool, replay_share = build_pool(captured, 4000)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    address = (args.target, args.port)
    total = int(args.rate * args.duration)
    sent = errors = 0
    sendto, clock, size = sock.sendto, time.monotonic, len(pool)
    start = clock()
    deadline = start + args.duration
    while sent < total:
        now = clock()
        if now >= deadline:
            break
        due = min(total, int((now - start) * args.rate) + 1, sent + 200)  # catch up in bursts
        while sent < due:
            try:
                sendto(pool[sent % size], address)
            except OSError:
                errors += 1
            sent += 1
        if sent >= int((clock() - start) * args.rate):
            time.sleep(0.0005)
    seconds = clock() - start
    print(json.dumps({"sent": sent, "send_errors": errors, "seconds": round(seconds, 3),
                      "rate": round(sent / seconds) if seconds else 0,
                      "captured": len(captured), "replay_share": replay_share / len(pool)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
