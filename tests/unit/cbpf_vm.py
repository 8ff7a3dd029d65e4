"""A small classic-BPF interpreter with the kernel's semantics, and the kernel's view of a received frame.

It decodes opcodes from its own reading of linux/filter.h rather than from
the assembler's constants, so a wrong opcode in the assembler cannot agree
with itself here. Semantics follow net/core/filter.c: A and X are u32, a load
beyond the end of the data ends the program with 0, and BPF_LD|BPF_ABS at
SKF_AD_OFF + n reads skb metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_U32 = 0xFFFFFFFF
_SKF_AD_OFF = -0x1000
_SKF_AD_VLAN_TAG = 44
_SKF_AD_VLAN_TAG_PRESENT = 48
_SKF_AD_VLAN_TPID = 60
_SIZES = {0x00: 4, 0x08: 2, 0x10: 1}  # BPF_W, BPF_H, BPF_B
_TAG_TPIDS = (0x8100, 0x88A8)  # the TPIDs the receive path lifts (eth_type_vlan)
_TPID_OFFSET, _TAG_LEN = 12, 4
_MIN_UNTAG = _TPID_OFFSET + _TAG_LEN + 2 + 2  # skb_vlan_untag pulls the tag and the EtherType behind it


class Instruction(Protocol):
    code: int
    jt: int
    jf: int
    k: int


class Unsupported(Exception):
    """An instruction outside the subset the relays' programs use."""


def _load(data: bytes, offset: int, size: int) -> int | None:
    if offset < 0 or offset + size > len(data):
        return None
    return int.from_bytes(data[offset:offset + size], "big")  # packet loads are network order


def run(program: Sequence[Instruction], data: bytes, vlan_tci: int | None = None, vlan_tpid: int = 0) -> int:
    """The accepted length (0 = refused) for `data` as the socket sees it, tag metadata beside it.

    `vlan_tpid` is what SKF_AD_VLAN_TPID returns; the kernel does not
    promise it for an untagged skb, so a correct program reads it only after
    SKF_AD_VLAN_TAG_PRESENT says a tag was lifted.
    """
    a = x = 0
    pc = 0
    while True:
        if not 0 <= pc < len(program):
            raise Unsupported(f"pc {pc} outside the program")
        ins = program[pc]
        pc += 1
        code, k = ins.code, ins.k
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        if cls == 0x00:  # BPF_LD
            if mode == 0x20:  # BPF_ABS
                signed = k - (1 << 32) if k & 0x80000000 else k
                if signed < 0:
                    a = _ancillary(signed - _SKF_AD_OFF, vlan_tci, vlan_tpid)
                    continue
                value = _load(data, signed, _SIZES[size])
            elif mode == 0x40:  # BPF_IND
                value = _load(data, (x + k) & _U32, _SIZES[size])
            elif mode == 0x80 and size == 0x00:  # BPF_LEN
                value = len(data)
            elif mode == 0x00:  # BPF_IMM
                value = k
            else:
                raise Unsupported(f"ld {code:#x}")
            if value is None:
                return 0
            a = value
        elif cls == 0x01:  # BPF_LDX
            if mode == 0xA0 and size == 0x10:  # BPF_MSH: X = 4 * (P[k] & 0xf)
                value = _load(data, k, 1)
                if value is None:
                    return 0
                x = (value & 0x0F) * 4
            elif mode == 0x00:
                x = k
            elif mode == 0x80:
                x = len(data)
            else:
                raise Unsupported(f"ldx {code:#x}")
        elif cls == 0x04:  # BPF_ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                a = (a + operand) & _U32
            elif op == 0x10:
                a = (a - operand) & _U32
            elif op == 0x20:
                a = (a * operand) & _U32
            elif op == 0x40:
                a |= operand
            elif op == 0x50:
                a &= operand
            elif op == 0x60:
                a = (a << operand) & _U32
            elif op == 0x70:
                a >>= operand
            elif op in (0x30, 0x90):  # BPF_DIV, BPF_MOD: the kernel ends the program with 0 on a zero divisor
                if operand == 0:
                    return 0
                a = a // operand if op == 0x30 else a % operand
            elif op == 0xA0:
                a ^= operand
            else:
                raise Unsupported(f"alu {code:#x}")
        elif cls == 0x05:  # BPF_JMP
            op = code & 0xF0
            if op == 0x00:  # BPF_JA
                pc += k
                continue
            operand = x if code & 0x08 else k
            if op == 0x10:
                taken = a == operand
            elif op == 0x20:
                taken = a > operand
            elif op == 0x30:
                taken = a >= operand
            elif op == 0x40:
                taken = bool(a & operand)
            else:
                raise Unsupported(f"jmp {code:#x}")
            pc += ins.jt if taken else ins.jf
        elif cls == 0x06:  # BPF_RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # BPF_MISC
            if code & 0xF8 == 0x00:
                x = a
            elif code & 0xF8 == 0x80:
                a = x
            else:
                raise Unsupported(f"misc {code:#x}")
        else:
            raise Unsupported(f"class {cls} (scratch memory)")


def _ancillary(field: int, vlan_tci: int | None, vlan_tpid: int) -> int:
    if field == _SKF_AD_VLAN_TAG_PRESENT:
        return int(vlan_tci is not None)
    if field == _SKF_AD_VLAN_TAG:
        return vlan_tci or 0
    if field == _SKF_AD_VLAN_TPID:
        return vlan_tpid
    raise Unsupported(f"ancillary load SKF_AD_OFF + {field}")


def socket_view(wire: bytes) -> tuple[bytes, int | None, int] | None:
    """(data, tci or None, tpid) as a packet socket's filter sees a received wire frame.

    The receive path lifts one outer 0x8100 or 0x88a8 tag into metadata and
    closes the gap (skb_vlan_untag). A tagged frame too short for that is
    freed before any socket sees it: that is None.
    """
    if len(wire) < _TPID_OFFSET + 2 or int.from_bytes(wire[_TPID_OFFSET:_TPID_OFFSET + 2], "big") not in _TAG_TPIDS:
        return wire, None, 0
    if len(wire) < _MIN_UNTAG:
        return None
    tpid = int.from_bytes(wire[_TPID_OFFSET:_TPID_OFFSET + 2], "big")
    tci = int.from_bytes(wire[_TPID_OFFSET + 2:_TPID_OFFSET + _TAG_LEN], "big")
    return wire[:_TPID_OFFSET] + wire[_TPID_OFFSET + _TAG_LEN:], tci, tpid


def accepts(program: Sequence[Instruction], wire: bytes) -> bool:
    """Whether a socket with `program` attached receives the wire frame `wire`."""
    view = socket_view(wire)
    return view is not None and run(program, *view) != 0


_ETH_HLEN = 14


def fanout_view(wire: bytes) -> tuple[bytes, int | None, int] | None:
    """(data, tci or None, tpid) as a PACKET_FANOUT program sees a received wire frame.

    The fanout demux runs before packet_rcv pushes the link-layer header
    back: its data starts at the network header, behind the 14-byte
    Ethernet header of the socket view (eth_type_trans pulled it).
    """
    view = socket_view(wire)
    if view is None:
        return None
    data, tci, tpid = view
    return data[_ETH_HLEN:], tci, tpid
