"""Capture the first hive datagram of a kind addressed to this lab host (AF_PACKET; root).

Usage (inside a lab host): python3 capture_datagram.py KIND OUTFILE SECONDS
Writes the datagram's bytes (the UDP payload, exactly as sent) to OUTFILE; exit 1 if none came.
It sees the datagram as it arrives; the host's agent receives it as usual.
"""

import json
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def main(kind: str, outfile: str, seconds: float) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    marker = f'"kind":"{kind}"'.encode()
    while time.monotonic() < deadline:
        try:
            packet = sock.recv(65535)
        except socket.timeout:
            continue
        if len(packet) < 28 or packet[9] != socket.IPPROTO_UDP:
            continue
        header = (packet[0] & 0x0F) * 4
        dport = struct.unpack("!H", packet[header + 2:header + 4])[0]
        payload = packet[header + 8:]
        if dport == 50555 and marker in payload and b'"probe":true' not in payload:
            with open(outfile, "wb") as handle:
                handle.write(payload)
            print(json.dumps({"captured": kind, "bytes": len(payload)}))
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
