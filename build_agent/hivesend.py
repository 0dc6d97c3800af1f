"""`hive send KIND key=value...`: sign one message with the hive's secret and send it (a test).

Values are read as JSON where they look like it (numbers, true/false/null, [lists], {objects},
"quoted strings") and as plain text otherwise, so ``role=builder interval=10 load=[0.5,0.4]
rebalance=false`` mean what they say.  The message is checked with the rules every receiver
applies (``protocol.encode``): a bad field is refused with one line naming it.  It is sent from
an ephemeral port (never the hive's: that is the daemons'), to the interface's broadcast
address or, with ``--to``, to one address.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from typing import Any

from . import protocol

_JSON_START = re.compile(r'^(?:-?\d|\[|\{|"|true\Z|false\Z|null\Z)')
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
# Fields a user may set to speak as another node (the defaults are this node's).
SENDER_FIELDS = ("node_id", "hostname", "primary_ip")


class SendError(ValueError):
    """One line saying what is wrong with the command."""


def parse_value(text: str) -> Any:
    """'10' -> 10, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2], 'builder' -> 'builder'."""
    if _JSON_START.match(text):
        try:
            return json.loads(text)
        except ValueError:
            pass  # e.g. '10.77.1.21' or '1-2': text
    return text


def parse_fields(items: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not KEY_RE.match(key):
            raise SendError(f"'{item}' is not key=value (e.g. role=builder interval=10)")
        if key in ("kind", "ts"):
            raise SendError(f"'{key}' is set by hive send (the KIND argument; the current time)")
        if key in fields:
            raise SendError(f"'{key}' is given twice")
        fields[key] = parse_value(value)
    return fields


def build(kind: str, fields: dict[str, Any], node_id: str, hostname: str, primary_ip: str,
          now: float, secret: bytes) -> tuple[dict, bytes]:
    """The payload (keys in the kind's order) and the signed datagram; SendError if a
    receiver would refuse it, naming the field."""
    kind = kind.upper()
    if kind not in protocol.KIND_FIELDS:
        raise SendError(f"unknown kind '{kind}' (one of {', '.join(protocol.KINDS)})")
    fields = dict(fields)
    sender = {name: fields.pop(name, default) for name, default in
              zip(SENDER_FIELDS, (node_id, hostname, primary_ip))}
    payload = protocol.make_payload(kind, sender["node_id"], sender["hostname"],
                                    sender["primary_ip"], now, **fields)
    try:
        return payload, protocol.encode(payload, secret)
    except protocol.ProtocolError as exc:
        reason = str(exc)
        name = reason.split(": ", 1)[1] if reason.startswith(("bad field: ", "missing field: ")) \
            else None
        if name is not None and reason.startswith("bad field") and name in payload:
            raise SendError(f"{kind}: bad field '{name}' = "
                            f"{json.dumps(payload[name])}: receivers would drop the message"
                            ) from None
        if name is not None:
            raise SendError(f"{kind}: missing field '{name}' (add {name}=...)") from None
        raise SendError(f"{kind}: {reason}: receivers would drop the message") from None


def destination(to: str | None, broadcast: str, port: int) -> tuple[str, int]:
    """--to ADDR[:PORT] (an IPv4 address or a name), or the broadcast address."""
    if to is None:
        return broadcast, port
    host, sep, port_text = to.rpartition(":")
    if not sep:
        host, port_text = to, str(port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SendError(f"--to {to}: the port must be a number from 1 to 65535")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        try:
            host = socket.gethostbyname(host)
        except OSError:
            raise SendError(f"--to {to}: not an IPv4 address, and the name does not resolve"
                            ) from None
    return host, int(port_text)


def send(data: bytes, source_ip: str, address: tuple[str, int]) -> int:
    """Send from this node's address and an ephemeral port (never the hive's); the port used."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((source_ip, 0))
        sock.sendto(data, address)
        return sock.getsockname()[1]
