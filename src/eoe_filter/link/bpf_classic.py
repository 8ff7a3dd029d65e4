"""Classic BPF: an assembler, the relays' two socket filters, the `--workers` flow hash, and attaching them.

The filters implement the pure predicates `wire.eoe.accepts_downstream` and
`wire.vlan.is_dhcp_client_frame`, which read the WIRE view of a frame. A
packet socket's filter does not see that view: on receive the kernel moves
the outer 802.1Q/802.1ad tag into skb metadata before any filter runs, so
every byte behind the tag sits 4 bytes earlier and the TPID and TCI are
reachable only through the ancillary loads (SKF_AD_*). Each program therefore
tests SKF_AD_VLAN_TAG_PRESENT first and runs the same checks in one of two
views: lifted (offsets - 4, tag from metadata) or inline (wire offsets, as for
a frame whose tag the kernel did not lift).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..wire.eoe import (
    CONTROL_OFFSET,
    CONTROL_PROTOCOL,
    ETH_HEADER_LEN,
    HEADER_LEN,
    INNER_TAGGED_ETHERTYPE_OFFSET,
    OP_CODE_SHIFT,
    OpCode,
)
from ..wire.vlan import (
    DHCP_CLIENT_PORT,
    ETHERTYPE_IPV4,
    IPPROTO_UDP,
    TAG_LEN,
    TCI_OFFSET,
    TPID_8021Q,
    TPID_OFFSET,
    VID_MASK,
)
from . import abi
from .abi import ABI

# Instruction fields (linux/filter.h, linux/bpf_common.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH = range(0x00, 0x80, 0x10)
BPF_NEG, BPF_MOD, BPF_XOR = 0x80, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X = 0x00, 0x08
BPF_A = 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80
BPF_MAXINSNS = 4096

# Ancillary loads: BPF_LD|BPF_ABS at SKF_AD_OFF + n reads skb metadata instead of packet data.
SKF_AD_OFF = -0x1000
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
SKF_AD_VLAN_TPID = 60

ACCEPT_WHOLE = 0xFFFFFFFF
"""Accepted length: the whole frame. The original's 0xffff would truncate a longer EOE frame."""
REFUSE = 0

SOCK_FILTER = struct.Struct("=HBBI")
"""NATIVE struct sock_filter: u16 code, u8 jt, u8 jf, u32 k."""


@dataclass(frozen=True, slots=True)
class Insn:
    """One resolved struct sock_filter; jt/jf count instructions to skip after this one."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        for name, top in (("code", 0xFFFF), ("jt", 0xFF), ("jf", 0xFF), ("k", 0xFFFFFFFF)):
            value = int(getattr(self, name))  # plain ints, also from IntEnum constants
            if not 0 <= value <= top:
                raise ValueError(f"{name}={value} does not fit 0..{top:#x}")
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class Jump:
    """A conditional jump to labels; None means the next instruction."""

    code: int
    k: int
    jt: str | None = None
    jf: str | None = None


@dataclass(frozen=True, slots=True)
class Label:
    name: str


Source = Insn | Jump | Label
Program = tuple[Insn, ...]


def stmt(code: int, k: int = 0) -> Insn:
    """BPF_STMT: any non-jump instruction."""
    return Insn(code, 0, 0, k)


def jump(code: int, k: int, jt: str | None = None, jf: str | None = None) -> Jump:
    """BPF_JUMP with symbolic targets."""
    return Jump(code, k, jt, jf)


def ld_ancillary(field: int) -> Insn:
    """A = the skb metadata word `field` (SKF_AD_*); k is SKF_AD_OFF + field as a u32."""
    return stmt(BPF_LD | BPF_W | BPF_ABS, (SKF_AD_OFF + field) & 0xFFFFFFFF)


def assemble(source: Iterable[Source]) -> Program:
    """Resolve labels to jt/jf offsets and check what the kernel's checker would refuse.

    Classic BPF jumps only forward, by at most 255 instructions, and the last
    instruction must be a return; an error names the offending label.
    """
    items = list(source)
    where: dict[str, int] = {}
    count = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name!r} defined twice")
            where[item.name] = count
        else:
            count += 1
    if not 0 < count <= BPF_MAXINSNS:
        raise ValueError(f"a program has 1..{BPF_MAXINSNS} instructions, not {count}")

    def offset(target: str | None, at: int) -> int:
        if target is None:
            return 0
        if target not in where:
            raise ValueError(f"jump to undefined label {target!r}")
        distance = where[target] - at - 1
        if not 0 <= distance <= 0xFF:
            raise ValueError(f"jump from instruction {at} to label {target!r} is out of range "
                             f"({distance}; classic BPF jumps forward by 0..255)")
        return distance

    program: list[Insn] = []
    for item in items:
        if isinstance(item, Jump):
            at = len(program)
            program.append(Insn(item.code, offset(item.jt, at), offset(item.jf, at), item.k))
        elif isinstance(item, Insn):
            program.append(item)
    if program[-1].code & 0x07 != BPF_RET:
        raise ValueError("the last instruction must be a return")
    return tuple(program)


def pack(program: Sequence[Insn]) -> bytes:
    """The instructions as the kernel reads them: an array of NATIVE struct sock_filter."""
    return b"".join(SOCK_FILTER.pack(i.code, i.jt, i.jf, i.k) for i in program)


class _SockFprog(ctypes.Structure):
    """NATIVE struct sock_fprog: unsigned short len, padding, pointer to the instructions."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install(sock: socket.socket, level: int, option: int, program: Sequence[Insn]) -> None:
    """setsockopt with a struct sock_fprog: the kernel copies the program during the call."""
    code = ctypes.create_string_buffer(pack(program))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    sock.setsockopt(level, option, bytes(fprog))


def attach(sock: socket.socket, program: Sequence[Insn]) -> None:
    """setsockopt(SOL_SOCKET, SO_ATTACH_FILTER)."""
    _install(sock, ABI.SOL_SOCKET, ABI.SO_ATTACH_FILTER, program)


def set_fanout_program(sock: socket.socket, program: Sequence[Insn]) -> None:
    """setsockopt(SOL_PACKET, PACKET_FANOUT_DATA): the program of the PACKET_FANOUT_CBPF group `sock` is in."""
    _install(sock, abi.SOL_PACKET, abi.PACKET_FANOUT_DATA, program)


def _at(wire_offset: int, lifted: bool) -> int:
    """The socket-view offset of a wire offset behind the tag; a lifted tag's bytes are not in the data."""
    if lifted and wire_offset < TCI_OFFSET + 2:
        raise ValueError(f"wire offset {wire_offset} is inside the lifted tag")
    return wire_offset - TAG_LEN if lifted else wire_offset


def _ldb(wire_offset: int, lifted: bool) -> Insn:
    return stmt(BPF_LD | BPF_B | BPF_ABS, _at(wire_offset, lifted))


def _ldh(wire_offset: int, lifted: bool) -> Insn:
    return stmt(BPF_LD | BPF_H | BPF_ABS, _at(wire_offset, lifted))


_ON_INLINE_VIEW: tuple[Source, ...] = (
    ld_ancillary(SKF_AD_VLAN_TAG_PRESENT),
    jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jt="inline"),
)
"""Fall through to the lifted view's checks, or jump to label "inline" when no tag was lifted."""
_RETURNS: tuple[Source, ...] = (
    Label("accept"), stmt(BPF_RET | BPF_K, ACCEPT_WHOLE),
    Label("drop"), stmt(BPF_RET | BPF_K, REFUSE),
)


def _eoe_checks(lifted: bool) -> list[Source]:
    """op_code (high nibble of byte 18) is 1 and be16 at 38 is not the control protocol."""
    return [
        _ldb(CONTROL_OFFSET, lifted),
        stmt(BPF_ALU | BPF_RSH | BPF_K, OP_CODE_SHIFT),
        jump(BPF_JMP | BPF_JEQ | BPF_K, OpCode.SWITCH_DOWNSTREAM, jf="drop"),
        _ldh(INNER_TAGGED_ETHERTYPE_OFFSET, lifted),  # beyond the end: the kernel returns 0
        jump(BPF_JMP | BPF_JEQ | BPF_K, CONTROL_PROTOCOL, jt="drop", jf="accept"),
    ]


def eoe_downstream_filter() -> Program:
    """`-F` for the EOE relay: the kernel-side twin of `wire.eoe.accepts_downstream`.

    Every EOE frame carries a 0x8100 tag, so on receive it is almost always
    seen lifted; the inline view serves frames whose tag stayed in the data.
    """
    return assemble([
        *_ON_INLINE_VIEW,
        *_eoe_checks(lifted=True),
        Label("inline"),
        *_eoe_checks(lifted=False),
        *_RETURNS,
    ])


# IPv4 and UDP field offsets, relative to their headers.
_ETHERTYPE_OFFSET = TCI_OFFSET + 2  # the tagged EtherType
_IP_OFFSET = _ETHERTYPE_OFFSET + 2
_IPV4_MIN_HEADER = 20
_IPV4_FRAGMENT = 6  # be16: flags (3 bits) and fragment offset (13 bits)
_IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF
_IPV4_PROTOCOL = 9
_UDP_DPORT = 2
_REFUSED_VID = 0xFFE  # 4094: the original's filter refuses it (wire.vlan hard-codes it too)


def _dhcp_checks(lifted: bool) -> list[Source]:
    """With the VID (low 12 bits of the TCI) in A: everything after the tag test.

    The length test mirrors the predicate, which wants a whole 20-byte IPv4
    header even when IHL says less; `ldx msh` reads the real IHL so that IP
    options move the UDP port, as in the original.
    """
    return [
        jump(BPF_JMP | BPF_JEQ | BPF_K, _REFUSED_VID, jt="drop"),
        stmt(BPF_LD | BPF_W | BPF_LEN),
        jump(BPF_JMP | BPF_JGE | BPF_K, _at(_IP_OFFSET + _IPV4_MIN_HEADER, lifted), jf="drop"),
        _ldh(_ETHERTYPE_OFFSET, lifted),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERTYPE_IPV4, jf="drop"),
        _ldb(_IP_OFFSET + _IPV4_PROTOCOL, lifted),
        jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, jf="drop"),
        _ldh(_IP_OFFSET + _IPV4_FRAGMENT, lifted),
        jump(BPF_JMP | BPF_JSET | BPF_K, _IPV4_FRAGMENT_OFFSET_MASK, jt="drop"),
        stmt(BPF_LDX | BPF_B | BPF_MSH, _at(_IP_OFFSET, lifted)),  # X = 4 * IHL
        stmt(BPF_LD | BPF_H | BPF_IND, _at(_IP_OFFSET + _UDP_DPORT, lifted)),
        jump(BPF_JMP | BPF_JEQ | BPF_K, DHCP_CLIENT_PORT, jt="accept", jf="drop"),
    ]


def dhcp_client_filter() -> Program:
    """`-F` for the DHCP relay: the kernel-side twin of `wire.vlan.is_dhcp_client_frame`.

    Only an 802.1Q tag counts: a lifted tag's TPID comes from SKF_AD_VLAN_TPID
    (0x88a8 is refused), an inline one is read at wire offset 12. Only the VID
    is compared, because kernels before 5.0 cleared the DEI bit in
    SKF_AD_VLAN_TAG (it doubled as their "tag present" flag).
    """
    return assemble([
        *_ON_INLINE_VIEW,
        ld_ancillary(SKF_AD_VLAN_TPID),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TPID_8021Q, jf="drop"),
        ld_ancillary(SKF_AD_VLAN_TAG),
        stmt(BPF_ALU | BPF_AND | BPF_K, VID_MASK),
        *_dhcp_checks(lifted=True),
        Label("inline"),
        stmt(BPF_LD | BPF_H | BPF_ABS, TPID_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TPID_8021Q, jf="drop"),
        stmt(BPF_LD | BPF_H | BPF_ABS, TCI_OFFSET),
        stmt(BPF_ALU | BPF_AND | BPF_K, VID_MASK),
        *_dhcp_checks(lifted=False),
        *_RETURNS,
    ])


# --- the fanout program: which worker of `--workers` gets an EOE frame ----------------------------
#
# PACKET_FANOUT runs its program before any member socket's filter, on the
# data as the receive path left it: it starts at the network header, behind
# the 14-byte Ethernet header. An EOE frame's tag is lifted, so that header
# is the outer MACs and the length field and the data starts at the EOE
# control byte (wire offset 18); were the tag inline, the data would start
# at the TCI (wire offset 14). The inner frame follows the header.

_FANOUT_INNER_LIFTED = HEADER_LEN - (ETH_HEADER_LEN + TAG_LEN)  # 4
_FANOUT_INNER_INLINE = HEADER_LEN - ETH_HEADER_LEN  # 8
_ETHERTYPE_IPV6 = 0x86DD
_IPPROTO_TCP = 6
_IPV4_SRC = 12  # then the destination: 8 bytes, two words
_IPV6_SRC = 8  # then the destination: 32 bytes, eight words
_IPV4_NOT_FIRST_OR_MORE = 0x3FFF  # MF flag and fragment offset: any fragment hashes without ports
FLOW_MIX = 0x9E3779B1
"""Knuth's multiplicative constant (2^32 / golden ratio): h = (h ^ word) * it spreads a word over the high bits."""
FOLD_SHIFT = 16
"""The high bits come down by h ^ (h >> 16) before the modulo takes the low ones."""


def _mix(word: Insn) -> list[Source]:
    """X = (X ^ word) * FLOW_MIX, the hash so far being in X."""
    return [word, stmt(BPF_ALU | BPF_XOR | BPF_X), stmt(BPF_ALU | BPF_MUL | BPF_K, FLOW_MIX),
            stmt(BPF_MISC | BPF_TAX)]


def _ld_w(offset: int) -> Insn:
    return stmt(BPF_LD | BPF_W | BPF_ABS, offset)


def _fold(workers: int) -> list[Source]:
    return [stmt(BPF_MISC | BPF_TXA), stmt(BPF_ALU | BPF_RSH | BPF_K, FOLD_SHIFT),
            stmt(BPF_ALU | BPF_XOR | BPF_X), stmt(BPF_ALU | BPF_MOD | BPF_K, workers),
            stmt(BPF_RET | BPF_A)]


def _flow_hash(base: int, workers: int) -> list[Source]:
    """The worker for an inner frame whose (last) EtherType is at base + 12, in the fanout view.

    The flow is the IPv4 address pair plus the TCP/UDP ports of an
    unfragmented packet (a fragment has no ports: addresses only, as RSS
    does), the IPv6 address pair, or else the 12 bytes before the EtherType
    (the inner MACs). A frame too short for what its type needs ends the
    program: worker 0, as the kernel makes of any load beyond the data.
    """
    at, l3 = f"at{base}", base + ETH_HEADER_LEN
    return [
        Label(at),
        stmt(BPF_LD | BPF_H | BPF_ABS, base + 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERTYPE_IPV4, jt=f"{at}.ipv4"),
        jump(BPF_JMP | BPF_JEQ | BPF_K, _ETHERTYPE_IPV6, jt=f"{at}.ipv6"),
        stmt(BPF_LDX | BPF_W | BPF_IMM, 0),
        *[item for offset in (0, 4, 8) for item in _mix(_ld_w(base + offset))],
        *_fold(workers),
        Label(f"{at}.ipv4"),
        stmt(BPF_LDX | BPF_W | BPF_IMM, 0),
        stmt(BPF_LD | BPF_B | BPF_ABS, l3 + _IPV4_PROTOCOL),
        jump(BPF_JMP | BPF_JEQ | BPF_K, _IPPROTO_TCP, jt=f"{at}.ports"),
        jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, jf=f"{at}.addresses"),
        Label(f"{at}.ports"),
        stmt(BPF_LD | BPF_H | BPF_ABS, l3 + _IPV4_FRAGMENT),
        jump(BPF_JMP | BPF_JSET | BPF_K, _IPV4_NOT_FIRST_OR_MORE, jt=f"{at}.addresses"),
        stmt(BPF_LDX | BPF_B | BPF_MSH, l3),  # X = 4 * IHL
        stmt(BPF_LD | BPF_W | BPF_IND, l3),  # both ports: the first word, so X = (0 ^ ports) * FLOW_MIX
        stmt(BPF_ALU | BPF_MUL | BPF_K, FLOW_MIX),
        stmt(BPF_MISC | BPF_TAX),
        Label(f"{at}.addresses"),
        *[item for offset in (0, 4) for item in _mix(_ld_w(l3 + _IPV4_SRC + offset))],
        *_fold(workers),
        Label(f"{at}.ipv6"),
        stmt(BPF_LDX | BPF_W | BPF_IMM, 0),
        *[item for offset in range(0, 32, 4) for item in _mix(_ld_w(l3 + _IPV6_SRC + offset))],
        *_fold(workers),
    ]


def eoe_fanout_program(workers: int) -> Program:
    """PACKET_FANOUT_CBPF for `--workers`: the member index (< workers) for an EOE frame, from its inner flow.

    Every frame of a flow goes to the same member, so one worker handles it
    and its frames keep their order. PACKET_FANOUT_HASH cannot do this: it
    hashes the outer headers, the same for every EOE frame. An inner frame
    with one 802.1Q tag is hashed behind its tag.
    """
    if not 1 <= workers <= 0xFFFF:
        raise ValueError(f"{workers} is not a number of fanout members")
    lifted, inline = _FANOUT_INNER_LIFTED, _FANOUT_INNER_INLINE
    return assemble([
        *_ON_INLINE_VIEW,
        stmt(BPF_LD | BPF_H | BPF_ABS, lifted + TPID_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TPID_8021Q, jt=f"at{lifted + TAG_LEN}", jf=f"at{lifted}"),
        Label("inline"),
        stmt(BPF_LD | BPF_H | BPF_ABS, inline + TPID_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TPID_8021Q, jt=f"at{inline + TAG_LEN}", jf=f"at{inline}"),
        *_flow_hash(lifted, workers),
        *_flow_hash(lifted + TAG_LEN, workers),
        *_flow_hash(inline + TAG_LEN, workers),
    ])


def tap_steering_program(queues: int) -> Program:
    """The TAP queue (< queues) for a frame the host sends, by the fanout program's flow hash.

    TUNSETSTEERINGEBPF runs it on the frame being transmitted, Ethernet
    header first: the inner frame of the EOE frame it becomes. Without it
    the tun driver steers a flow to the queue that last wrote one of the
    flow's replies, or else by hash: a flow would move between queues (and
    workers) as replies come and go, and could be reordered.
    """
    if not 1 <= queues <= 0xFFFF:
        raise ValueError(f"{queues} is not a number of TAP queues")
    return assemble([
        stmt(BPF_LD | BPF_H | BPF_ABS, TPID_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TPID_8021Q, jt=f"at{TAG_LEN}", jf="at0"),
        *_flow_hash(0, queues),
        *_flow_hash(TAG_LEN, queues),
    ])
