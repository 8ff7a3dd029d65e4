"""The 22-byte EOE header, declared once; encoding and decoding without I/O.

On the wire the header reads like an 802.1Q-tagged 802.3 header (DA, SA,
TPID, TCI, length) followed by 4 bytes of EOE control, then the inner
Ethernet frame. Every field is big-endian on every machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from .drops import DropReason

HEADER = struct.Struct("!6s6sHHHBHB")
"""dst, src, tpid, tci, length, control byte, itf, protocol_id."""
HEADER_LEN = HEADER.size  # 22
TCI_OFFSET = 14
LENGTH_OFFSET = 16
CONTROL_OFFSET = 18
AFTER_LENGTH = HEADER_LEN - LENGTH_OFFSET - 2  # control, itf, protocol_id: 4 bytes counted by `length`

OP_CODE_SHIFT = 4
DOWNSTREAM_BIT = 0x08
FLAG_MASK = 0x07

ETH_HEADER_LEN = 14
MIN_FRAME = HEADER_LEN + ETH_HEADER_LEN  # 36: anything shorter cannot hold an inner Ethernet header
MIN_INNER = 64  # inner frames are zero-padded to this before the header is added
MAX_INNER = 0xFFFF - AFTER_LENGTH  # 65531: the largest whose length field fits 16 bits
BUFFER_SIZE = 0xFFFF + HEADER_LEN  # 65557, the original's buffer ("Buffer size is 65557")

INNER_TAGGED_ETHERTYPE_OFFSET = HEADER_LEN + 12 + 4  # 38: inner EtherType behind one inner 802.1Q tag
CONTROL_PROTOCOL = 0x08AB  # internal control protocol that must never reach the TAP


class OpCode(IntEnum):
    SWITCH_DOWNSTREAM = 1
    A2A_SWITCH = 8


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


_LIMITS = {"tpid": 0xFFFF, "pcp": 7, "dei": 1, "vid": 0xFFF, "op_code": 15,
           "downstream": 1, "flag": 7, "itf": 0xFFFF, "protocol_id": 0xFF, "length": 0xFFFF}


@dataclass(frozen=True, slots=True)
class EoeHeader:
    """The header's fields; `length` only matters when decoding (encoding computes it)."""

    dst: bytes = field(default=bytes.fromhex("0600000000f8"))
    src: bytes = field(default=bytes.fromhex("060000000078"))
    tpid: int = 0x8100
    pcp: int = 0
    dei: int = 0
    vid: int = 0xFFE
    op_code: int = OpCode.A2A_SWITCH
    downstream: int = 0
    flag: int = 0
    itf: int = 0
    protocol_id: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        for name in ("dst", "src"):
            if len(getattr(self, name)) != 6:
                raise ValueError(f"{name}: a MAC address has 6 bytes")
        for name, top in _LIMITS.items():
            value = getattr(self, name)
            if not 0 <= value <= top:
                raise ValueError(f"{name}: {value} is outside 0..{top}")

    @property
    def tci(self) -> int:
        return self.pcp << 13 | self.dei << 12 | self.vid

    @property
    def control(self) -> int:
        return self.op_code << OP_CODE_SHIFT | self.downstream << 3 | self.flag

    @property
    def pon(self) -> int:
        return self.itf >> 12

    @property
    def gem_port(self) -> int:
        return self.itf & 0xFFF

    def pack(self, length: int | None = None) -> bytes:
        return HEADER.pack(self.dst, self.src, self.tpid, self.tci,
                           self.length if length is None else length,
                           self.control, self.itf, self.protocol_id)

    @classmethod
    def unpack(cls, frame: bytes | bytearray | memoryview) -> EoeHeader:
        dst, src, tpid, tci, length, control, itf, protocol_id = HEADER.unpack_from(frame)
        return cls(dst=bytes(dst), src=bytes(src), tpid=tpid, pcp=tci >> 13, dei=tci >> 12 & 1,
                   vid=tci & 0xFFF, op_code=control >> OP_CODE_SHIFT,
                   downstream=control >> 3 & 1, flag=control & FLAG_MASK, itf=itf,
                   protocol_id=protocol_id, length=length)


def encapsulate_into(buf: bytearray, start: int, end: int, template: bytes) -> int:
    """Wrap the inner frame at buf[start:end] in place; return the new start, or -1 if too big.

    `template` is a packed header (length ignored); the caller leaves at least
    HEADER_LEN bytes of headroom before `start` and room to pad to MIN_INNER
    after it, so the hot path allocates nothing. The encapsulated frame is
    buf[new_start:max(end, start + MIN_INNER)].
    """
    inner_len = end - start
    if inner_len > MAX_INNER:
        return -1
    if inner_len < MIN_INNER:
        buf[end:start + MIN_INNER] = bytes(MIN_INNER - inner_len)
        inner_len = MIN_INNER
    head = start - HEADER_LEN
    buf[head:start] = template
    length = inner_len + AFTER_LENGTH
    buf[head + LENGTH_OFFSET] = length >> 8
    buf[head + LENGTH_OFFSET + 1] = length & 0xFF
    return head


def encapsulate(header: EoeHeader, inner: bytes | bytearray | memoryview) -> bytes | DropReason:
    """The EOE frame for `inner`, or DropReason.TOO_BIG."""
    buf = bytearray(HEADER_LEN + max(len(inner), MIN_INNER))
    buf[HEADER_LEN:HEADER_LEN + len(inner)] = inner
    head = encapsulate_into(buf, HEADER_LEN, HEADER_LEN + len(inner), header.pack(0))
    return DropReason.TOO_BIG if head < 0 else bytes(buf)


def decapsulate(frame: bytes | bytearray | memoryview) -> memoryview | DropReason:
    """The inner frame of a wire-view EOE frame, as the original did: no field is checked."""
    if len(frame) < MIN_FRAME:
        return DropReason.RUNT
    return memoryview(frame)[HEADER_LEN:]


def decode(frame: bytes | bytearray | memoryview) -> tuple[EoeHeader, memoryview] | DropReason:
    """Header fields and inner frame, for tools that look (the forwarder itself does not)."""
    if len(frame) < MIN_FRAME:
        return DropReason.RUNT
    return EoeHeader.unpack(frame), memoryview(frame)[HEADER_LEN:]


def accepts_downstream(frame: bytes | bytearray | memoryview) -> bool:
    """The `-F` rule on the wire view: op_code 1, and no inner control protocol at offset 38.

    Offset 38 is the inner EtherType only when the inner frame carries one
    802.1Q tag; on an untagged inner IPv4 frame it is the IP total length,
    so a 2219-byte IP packet is dropped too, exactly as the original did.
    A frame too short to hold offset 38 is refused, as the kernel's BPF
    load beyond the end would.
    """
    end = INNER_TAGGED_ETHERTYPE_OFFSET
    return (len(frame) >= end + 2
            and frame[CONTROL_OFFSET] >> OP_CODE_SHIFT == OpCode.SWITCH_DOWNSTREAM
            and (frame[end] << 8 | frame[end + 1]) != CONTROL_PROTOCOL)
