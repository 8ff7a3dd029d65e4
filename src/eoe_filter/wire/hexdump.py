"""The `-dd` hex dump: 16 bytes a row with offsets, like the original."""

from __future__ import annotations


def hexdump(data: bytes | bytearray | memoryview) -> str:
    rows = []
    raw = bytes(data)
    for offset in range(0, len(raw), 16):
        chunk = raw[offset:offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{offset:04x}  {hexes:<47}  {text}")
    return "\n".join(rows)
