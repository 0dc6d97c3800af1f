"""The small part of MessagePack that Serf's RPC protocol uses (stdlib only).

``packb`` encodes dicts, lists, text, bytes, ints, floats, bools and None; ``Unpacker`` decodes a
stream incrementally: feed it bytes, then call ``next()`` until it raises ``NeedMore``.
"""

from __future__ import annotations

import struct


class NeedMore(Exception):
    """The buffer ends inside an object: read more bytes and try again."""


def packb(obj) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -32 <= obj < 0:
            out.append(obj & 0xFF)
        elif 0 <= obj < 2 ** 64:
            out += b"\xcf" + struct.pack(">Q", obj)
        else:
            out += b"\xd3" + struct.pack(">q", obj)
    elif isinstance(obj, float):
        out += b"\xcb" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode()
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 256:
            out += bytes((0xD9, n))
        elif n < 65536:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += data
    elif isinstance(obj, (bytes, bytearray)):
        n = len(obj)
        if n < 256:
            out += bytes((0xC4, n))
        elif n < 65536:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += obj
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            out.append(0x90 | n)
        elif n < 65536:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        n = len(obj)
        if n < 16:
            out.append(0x80 | n)
        elif n < 65536:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"cannot pack {type(obj).__name__}")


_FIXED = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i",
          0xD3: ">q", 0xCA: ">f", 0xCB: ">d"}


class Unpacker:
    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self):
        """Decode and remove one object from the buffer, or raise NeedMore."""
        obj, end = _unpack(self.buf, 0)
        del self.buf[:end]
        return obj


def _take(buf, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(buf):
        raise NeedMore
    return bytes(buf[pos:pos + n]), pos + n


def _unpack(buf, pos: int):
    if pos >= len(buf):
        raise NeedMore
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0x80 <= b <= 0x8F:
        return _map(buf, pos, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return _array(buf, pos, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        data, pos = _take(buf, pos, b & 0x1F)
        return data.decode("utf-8", "replace"), pos
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    if b in _FIXED:
        fmt = _FIXED[b]
        data, pos = _take(buf, pos, struct.calcsize(fmt))
        return struct.unpack(fmt, data)[0], pos
    if b in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):  # bin 8/16/32, str 8/16/32
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
        head, pos = _take(buf, pos, width)
        data, pos = _take(buf, pos, int.from_bytes(head, "big"))
        return (data.decode("utf-8", "replace") if b >= 0xD9 else data), pos
    if b in (0xDC, 0xDD):
        head, pos = _take(buf, pos, 2 if b == 0xDC else 4)
        return _array(buf, pos, int.from_bytes(head, "big"))
    if b in (0xDE, 0xDF):
        head, pos = _take(buf, pos, 2 if b == 0xDE else 4)
        return _map(buf, pos, int.from_bytes(head, "big"))
    if b in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):  # fixext 1/2/4/8/16: type byte + data
        data, pos = _take(buf, pos, 1 + {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}[b])
        return data[1:], pos
    if b in (0xC7, 0xC8, 0xC9):  # ext 8/16/32
        width = {0xC7: 1, 0xC8: 2, 0xC9: 4}[b]
        head, pos = _take(buf, pos, width)
        data, pos = _take(buf, pos, 1 + int.from_bytes(head, "big"))
        return data[1:], pos
    raise ValueError(f"msgpack: unknown type byte 0x{b:02x}")


def _array(buf, pos: int, n: int):
    items = []
    for _ in range(n):
        item, pos = _unpack(buf, pos)
        items.append(item)
    return items, pos


def _map(buf, pos: int, n: int):
    result = {}
    for _ in range(n):
        key, pos = _unpack(buf, pos)
        value, pos = _unpack(buf, pos)
        if isinstance(key, (bytes, bytearray)):
            key = bytes(key).decode("utf-8", "replace")
        result[key] = value
    return result, pos
