"""The relays as kernel programs, assembled from the wire constants the userspace codecs use.

EOE, net -> TAP: a tc ingress program on the network interface applies the
userspace acceptance rule on the wire view (the stack keeps the outer tag
in skb metadata), strips the 22-byte header and injects the inner frame
into the TAP's receive path, as a write to the TAP would. No XDP: native
XDP on a veth copies every frame into a page and turns the veth into a
NAPI device (measured here: 1.7× the CPU per frame of this program), a
NIC with receive VLAN offload hides the tag from it, and generic XDP skips
frames another tc program redirected.

EOE, TAP -> net: tc egress on the TAP runs before the kernel segments and
checksums, and a TCP socket builds super-frames with partial checksums
whatever the device's offload settings. So a tc egress program on the TAP
sends every frame through the segmenter, a veth pair without transmit
offloads, where the kernel finishes it; a tc ingress program on its far end
pads to 64 bytes, pushes the header and sends the frame to the network
interface.

DHCP: one tc ingress program per side rewrites the VID (pop + push: the
kernel keeps a received tag in skb metadata) and sends to the other side.

Frames are sent with bpf_clone_redirect, which transmits before it returns:
a frame the kernel refuses (its target down, no buffers) is counted, where
bpf_redirect would lose it silently after the program. Counters live in a
per-CPU array: one value per direction, one slot per DropReason, one for
refused frames, which the control plane names (it sees the link events).

Packet stores follow the verifier's strict alignment rule (the packet start
counts as 2 mod 4, NET_IP_ALIGN), so the programs also load on MIPS boards,
which lack efficient unaligned access; every program is loaded strict here too.
"""
from __future__ import annotations

import ctypes
import errno
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..wire import eoe, vlan
from ..wire.accept import AcceptRule
from ..wire.drops import DropReason
from .asm import (
    DIV,
    DW,
    FP,
    MOD,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    B,
    H,
    Item,
    Label,
    Reg,
    W,
    add,
    alu64,
    and_,
    call,
    exit_,
    goto,
    jump_if,
    jump_if32,
    ld_map,
    ldx,
    lsh,
    mov,
    mov32,
    or_,
    rsh,
    st,
    stx,
    sub,
    to_be,
)
from .syscall import (
    MAP_TYPE_ARRAY,
    MAP_TYPE_PERCPU_ARRAY,
    PROG_TYPE_SCHED_CLS,
)


class SkBuff(ctypes.Structure):
    """struct __sk_buff (linux/bpf.h), the tc programs' context, as far as used; NATIVE layout."""

    _fields_ = [("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
                ("vlan_present", ctypes.c_uint32), ("vlan_tci", ctypes.c_uint32), ("vlan_proto", ctypes.c_uint32),
                ("priority", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("tc_index", ctypes.c_uint32), ("cb", ctypes.c_uint32 * 5), ("hash", ctypes.c_uint32),
                ("tc_classid", ctypes.c_uint32), ("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("napi_id", ctypes.c_uint32), ("family", ctypes.c_uint32), ("remote_ip4", ctypes.c_uint32),
                ("local_ip4", ctypes.c_uint32), ("remote_ip6", ctypes.c_uint32 * 4),
                ("local_ip6", ctypes.c_uint32 * 4), ("remote_port", ctypes.c_uint32),
                ("local_port", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
                ("flow_keys", ctypes.c_uint64), ("tstamp", ctypes.c_uint64), ("wire_len", ctypes.c_uint32),
                ("gso_segs", ctypes.c_uint32), ("sk", ctypes.c_uint64), ("gso_size", ctypes.c_uint32)]


def skb(field: str) -> int:
    return getattr(SkBuff, field).offset


# Verdicts and flags (linux/pkt_cls.h, linux/bpf.h).
TC_ACT_NEXT = -1
"""TC_ACT_UNSPEC (TCX_NEXT): not ours, let later programs and the host's stack have it untouched."""
TC_ACT_SHOT = 2
BPF_F_INGRESS = 1

IPV4_FRAGMENT = 6  # be16 flags + fragment offset, in the IPv4 header
IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF
IPV4_PROTOCOL = 9
IPV4_MIN_HEADER = 20
UDP_DPORT = 2
REFUSED_DHCP_VID = 0xFFE  # 4094: the original's DHCP filter refuses it (wire.vlan hard-codes it too)
UNTAGGABLE = eoe.ETH_HEADER_LEN + vlan.TAG_LEN + 2
"""skb_vlan_untag pulls the tag and 2 more bytes behind the Ethernet header; a shorter tagged frame is freed."""
NET_IP_ALIGN = 2
"""The verifier's assumed alignment of a packet's first byte (2 mod 4, so the IP header is 4-aligned)."""

# Maps shared by every program of one forwarder.
NET_TO_SERVICE, SERVICE_TO_NET = 0, 1
SLOT_FRAMES, SLOT_BYTES = 0, 1
SLOT_REFUSED = 2 + max(DropReason) + 1
"""Frames the kernel refused after a redirect (its target was down, or out of buffers): the control
plane, which sees the link events, names the reason."""
SLOT_INJECTED = SLOT_REFUSED + 1
"""Two slots, one per epoch: frames redirected into the TAP's receive path (net -> TAP)."""
SLOT_ARRIVED = SLOT_INJECTED + 2
"""Two slots, one per epoch: of those, the frames that arrived there. Once an epoch is over and its
last frames have had time to land, the difference is exactly what the kernel refused."""
SLOTS = SLOT_ARRIVED + 2
COUNTERS_VALUE = 8 * SLOTS


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    type: int
    value_size: int
    entries: int


MAPS = (MapSpec("eoe_counters", MAP_TYPE_PERCPU_ARRAY, COUNTERS_VALUE, 2),
        MapSpec("eoe_epoch", MAP_TYPE_ARRAY, 4, 1))
COUNTERS, EPOCH = (m.name for m in MAPS)

SEGMENT_MARK = 0xE0E5_5E61
"""skb->mark of frames on their way through the segmenter (restored to 0 after it)."""
INJECT_MARK = 0xE0E5_1A70
"""skb->mark of frames on their way into the TAP, plus their epoch in bit 0 (restored to 0 on arrival)."""
PROGRAM_PREFIX = "eoe_"


def drop_slot(reason: DropReason) -> int:
    return 2 + reason


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """A program ready to assemble: its name (prefix PROGRAM_PREFIX: ours, replaceable), type and items."""

    name: str
    type: int
    items: tuple[Item, ...]


def native(value: int, size: int) -> int:
    """A big-endian wire value of `size` bytes as the integer a native load of those bytes yields."""
    return int.from_bytes(value.to_bytes(size, "big"), sys.byteorder)


def _lookup(name: str, key: int, into: Reg, miss: str) -> list[Item]:
    return [st(W, FP, -4, key), ld_map(R1, name), mov(R2, FP), add(R2, -4), call("map_lookup_elem"),
            jump_if(R0, "==", 0, miss), mov(into, R0)]


def _bump(slot: int, amount: Reg | int = 1) -> list[Item]:
    """Counter slot += amount, in this CPU's value (R9)."""
    return [ldx(DW, R1, R9, 8 * slot), add(R1, amount), stx(DW, R9, 8 * slot, R1)]


def _drop(label: str, reason: DropReason, verdict: int) -> list[Item]:
    return [Label(label), *_bump(drop_slot(reason)), mov(R0, verdict), exit_()]


def _bounds(data: Reg, end: Reg, length: int, short: str) -> list[Item]:
    """Go to `short` unless data + length <= end (what the verifier needs before a packet access)."""
    return [mov(R1, data), add(R1, length), jump_if(R1, ">", end, short)]


def _aligned_stores(base: Reg, at: int, data: bytes) -> list[Item]:
    """Store constant bytes at base + at in the widest pieces the strict alignment rule allows."""
    items: list[Item] = []
    pos = 0
    while pos < len(data):
        size = next(s for s in (4, 2, 1) if (NET_IP_ALIGN + at + pos) % s == 0 and pos + s <= len(data))
        code = {4: W, 2: H, 1: B}[size]
        items.append(st(code, base, at + pos, int.from_bytes(data[pos:pos + size], sys.byteorder)))
        pos += size
    return items


def _wire_length(into: Reg) -> list[Item]:
    """into = the skb's length on the wire: its data plus a tag the stack keeps in metadata."""
    return [ldx(W, into, R6, skb("len")), ldx(W, R1, R6, skb("vlan_present")), lsh(R1, 2), add(into, R1)]


def _send(ifindex: int, flags: int) -> list[Item]:
    """Hand a copy of the skb in R6 to `ifindex` now, count by the kernel's answer, drop the original.

    bpf_clone_redirect transmits before it returns, so a frame the kernel
    refuses is counted where bpf_redirect would lose it: ENETDOWN is a down
    network device, anything else goes to SLOT_REFUSED. R7 holds the frame's
    wire length. The original is dropped either way, the copy is what
    travels; every caller runs at tc ingress, where no sender sees that.
    """
    return [
        mov(R1, R6), mov(R2, ifindex), mov(R3, flags), call("clone_redirect"),
        jump_if(R0, "==", 0, "sent"),
        jump_if(R0, "==", -errno.ENETDOWN, "refused_down"),
        *_bump(SLOT_REFUSED), mov(R0, TC_ACT_SHOT), exit_(),
        *_drop("refused_down", DropReason.NET_DOWN, TC_ACT_SHOT),
        Label("sent"), *_bump(SLOT_FRAMES), *_bump(SLOT_BYTES, R7), mov(R0, TC_ACT_SHOT), exit_(),
    ]


def _accept_rule(rule: AcceptRule) -> list[Item]:
    """wire.accept.AcceptRule at tc ingress: destination MAC and outer VID in the configured sets, else "filtered".

    The outer tag is in skb metadata. The sets are small, so the compares are unrolled.
    """
    items: list[Item] = [
        ldx(W, R1, R6, skb("len")), ldx(W, R4, R6, skb("vlan_present")), lsh(R4, 2), add(R1, R4),
        jump_if(R1, "<", vlan.TCI_OFFSET + 2, "filtered"),
        ldx(W, R2, R6, skb("data")), ldx(W, R3, R6, skb("data_end")), *_bounds(R2, R3, 6, "filtered")]
    if rule.dmacs:
        items += [ldx(H, R1, R2, 0), ldx(W, R4, R2, 2)]
        for i, mac in enumerate(sorted(rule.dmacs)):
            items += [jump_if(R1, "!=", int.from_bytes(mac[:2], sys.byteorder), f"acc_mac{i}"),
                      jump_if32(R4, "==", int.from_bytes(mac[2:], sys.byteorder), "acc_mac_ok"),
                      Label(f"acc_mac{i}")]
        items += [goto("filtered"), Label("acc_mac_ok")]
    if rule.vids:
        items += [ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "filtered"),
                  ldx(W, R1, R6, skb("vlan_proto")), jump_if(R1, "!=", native(vlan.TPID_8021Q, 2), "filtered"),
                  ldx(W, R1, R6, skb("vlan_tci"))]
        items += [and_(R1, vlan.VID_MASK), *[jump_if(R1, "==", vid, "acc_vid_ok") for vid in sorted(rule.vids)],
                  goto("filtered"), Label("acc_vid_ok")]
    return items


# --- EOE, net -> TAP ------------------------------------------------------------------

STRIP_MAX_INNER = 15 * 1024
"""The largest inner frame eoe_decap_tc forwards. tc ingress cannot trim an skb past SKB_MAX_ALLOC (four
pages less the skb's shared info: 16,064 bytes with 4 KiB pages); a larger frame is counted as too big
and left to the host's stack. Jumbo frames (9,216) fit."""
COPY_CHUNK = 464
"""Bytes moved per helper call when the inner frame slides over the stripped header: what the stack's
512 bytes leave room for besides eoe_decap_tc's other slots (a multiple of 8, zeroed in words)."""
COPY_CHUNKS = -(-STRIP_MAX_INNER // COPY_CHUNK)
"""Enough chunks for the longest frame forwarded: the bound the verifier needs to accept the loop."""


def _load_wire(at: int, size: int, into: Reg, fail: str) -> list[Item]:
    """into = the `size` bytes (native load) at wire offset `at` >= 16 of the frame at tc ingress.

    R7 holds how many wire bytes the data lacks in front of `at` (the lifted tag).
    """
    code = {1: B, 2: H}[size]
    return [mov(R1, R6), mov(R2, at), sub(R2, R7), mov(R3, FP), add(R3, -16), mov(R4, size),
            call("skb_load_bytes"), jump_if(R0, "!=", 0, fail), ldx(code, into, FP, -16)]


def _move(offset: int, buffer: int, size: int) -> list[Item]:
    """Move a chunk of the frame from R7 + [FP + offset] to R7 through the stack at FP + buffer.

    `size` is COPY_CHUNK, or negative: the stack slot holding the frame's
    length, whose last partial chunk moves (nothing when there is none).
    """
    if size > 0:
        sized: list[Item] = [mov(R4, size)]
    else:
        sized = [ldx(DW, R4, FP, size), alu64(MOD, R4, COPY_CHUNK),
                 jump_if(R4, "<", 1, "copied"), jump_if(R4, ">", COPY_CHUNK, "broken")]  # bounds for the verifier
    return [*sized, mov(R1, R6), ldx(DW, R2, FP, offset), add(R2, R7), mov(R3, FP), add(R3, buffer),
            call("skb_load_bytes"), jump_if(R0, "!=", 0, "broken"),
            *sized, mov(R1, R6), mov(R2, R7), mov(R3, FP), add(R3, buffer), mov(R5, 0),
            call("skb_store_bytes"), jump_if(R0, "!=", 0, "broken")]


def eoe_decap_tc(accept_filter: bool, rule: AcceptRule, tap_ifindex: int) -> ProgramSpec:
    """Net ingress: strip the header and inject the inner frame into the TAP's receive path.

    Runt and filtered frames go on to the host's stack untouched. The checks
    run in the userspace path's order (-F, the acceptance rule, the runt
    test) on the wire view: the stack has lifted the outer tag into skb
    metadata, so a wire offset past it is 4 less in the data. tc cannot take
    bytes off the front of a non-IP skb (bpf_skb_adjust_room handles IP
    only), so the inner frame slides over the header through the stack, a
    chunk at a time, and the tail is trimmed. A frame the TAP's stack would
    free unseen (an inner tag it cannot lift) is counted as forwarded and
    dropped, as userspace's write was counted. Redirected frames are marked
    with the current epoch and counted as injected: eoe_arrival_tc counts
    them again on arrival.
    """
    # Stack: -4 map key, -16 _load_wire; then the header's length in the data, the inner frame's length,
    # the counters (R9 counts chunks while they move), a chunk.
    offset, length, counters, buffer = -24, -32, -40, -40 - COPY_CHUNK
    items: list[Item] = [
        mov(R6, R1),
        *_lookup(COUNTERS, NET_TO_SERVICE, R9, "next"),
        ldx(W, R7, R6, skb("vlan_present")), lsh(R7, 2),
        ldx(W, R8, R6, skb("len")), add(R8, R7),  # the wire length
    ]
    if accept_filter:  # wire.eoe.accepts_downstream
        items += [
            jump_if(R8, "<", eoe.INNER_TAGGED_ETHERTYPE_OFFSET + 2, "filtered"),
            *_load_wire(eoe.CONTROL_OFFSET, 1, R1, "other"), rsh(R1, eoe.OP_CODE_SHIFT),
            jump_if(R1, "!=", eoe.OpCode.SWITCH_DOWNSTREAM, "filtered"),
            *_load_wire(eoe.INNER_TAGGED_ETHERTYPE_OFFSET, 2, R1, "other"),
            jump_if(R1, "==", native(eoe.CONTROL_PROTOCOL, 2), "filtered"),
        ]
    if rule:
        items += _accept_rule(rule)
    if not accept_filter:  # wire.eoe.decapsulate
        items.append(jump_if(R8, "<", eoe.MIN_FRAME, "runt"))
    items += [
        jump_if(R8, ">", eoe.HEADER_LEN + STRIP_MAX_INNER, "too_big"),
        jump_if(R8, ">=", eoe.HEADER_LEN + UNTAGGABLE, "strip"),
        *_load_wire(eoe.HEADER_LEN + vlan.TPID_OFFSET, 2, R1, "other"),
        jump_if(R1, "==", native(vlan.TPID_8021Q, 2), "untaggable"),
        jump_if(R1, "!=", native(vlan.TPID_8021AD, 2), "strip"),
        Label("untaggable"), sub(R8, eoe.HEADER_LEN), *_bump(SLOT_FRAMES), *_bump(SLOT_BYTES, R8),
        mov(R0, TC_ACT_SHOT), exit_(),
        Label("strip"),
        # Clear the lifted tag. Behind a VLAN EtherType the kernel lifts the next 4 bytes into its place;
        # that is the header's too, once: a third would be the inner frame's.
        stx(DW, FP, counters, R9),
        jump_if(R7, "==", 0, "popped"),
        mov(R1, R6), call("skb_vlan_pop"), jump_if(R0, "!=", 0, "broken"),
        ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "popped"),
        add(R7, vlan.TAG_LEN),
        mov(R1, R6), call("skb_vlan_pop"), jump_if(R0, "!=", 0, "broken"),
        ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "!=", 0, "broken"),
        Label("popped"),
        # Helpers may only see initialised stack without CAP_PERFMON, which --user does not keep.
        *[st(DW, FP, buffer + at, 0) for at in range(0, COPY_CHUNK, 8)],
        mov(R1, eoe.HEADER_LEN), sub(R1, R7), stx(DW, FP, offset, R1),
        ldx(W, R8, R6, skb("len")), sub(R8, R1), and_(R8, 0xFFFF), stx(DW, FP, length, R8),
        # Whole chunks first, then the rest: one path per chunk, which the verifier follows linearly.
        alu64(DIV, R8, COPY_CHUNK),
        mov(R7, 0), mov(R9, 0),  # where the next chunk goes; chunks moved
        Label("copy"),
        jump_if(R9, ">=", R8, "rest"),
        jump_if(R9, ">=", COPY_CHUNKS, "broken"),
        *_move(offset, buffer, COPY_CHUNK),
        add(R7, COPY_CHUNK), add(R9, 1), goto("copy"),
        Label("rest"),
        *_move(offset, buffer, length),
        Label("copied"),
        mov(R1, R6), ldx(W, R2, R6, skb("len")), ldx(DW, R3, FP, offset), sub(R2, R3), mov(R3, 0),
        call("skb_change_tail"), jump_if(R0, "!=", 0, "broken"),
        ldx(DW, R9, FP, counters),
        *_lookup(EPOCH, 0, R8, "shot"),
        ldx(W, R7, R8, 0), and_(R7, 1),
        mov32(R1, INJECT_MARK), or_(R1, R7), stx(W, R6, skb("mark"), R1),
        lsh(R7, 3), add(R7, R9),  # this epoch's injected slot
        ldx(DW, R1, R7, 8 * SLOT_INJECTED), add(R1, 1), stx(DW, R7, 8 * SLOT_INJECTED, R1),
        mov(R1, tap_ifindex), mov(R2, BPF_F_INGRESS), call("redirect"), exit_(),
        # Changed halfway: the frame is no longer what arrived, so nobody may have it.
        Label("broken"), ldx(DW, R9, FP, counters),
        *_drop("broken_counted", DropReason.OTHER, TC_ACT_SHOT),
        *_drop("other", DropReason.OTHER, TC_ACT_NEXT),
        *_drop("too_big", DropReason.TOO_BIG, TC_ACT_NEXT),
        Label("shot"), mov(R0, TC_ACT_SHOT), exit_(),
        *(_drop("filtered", DropReason.FILTERED, TC_ACT_NEXT) if accept_filter or rule else []),
        *([] if accept_filter else _drop("runt", DropReason.RUNT, TC_ACT_NEXT)),
        Label("next"), mov(R0, TC_ACT_NEXT), exit_(),
    ]
    return ProgramSpec("eoe_decap", PROG_TYPE_SCHED_CLS, tuple(items))


def eoe_arrival_tc() -> ProgramSpec:
    """TAP ingress: count the frames eoe_to_tap injected as they arrive (forwarded) and clear their mark."""
    return ProgramSpec("eoe_arrival", PROG_TYPE_SCHED_CLS, (
        mov(R6, R1),
        ldx(W, R7, R6, skb("mark")), mov(R1, R7), and_(R1, ~1),
        jump_if32(R1, "!=", INJECT_MARK & ~1, "next"),
        mov(R1, 0), stx(W, R6, skb("mark"), R1),
        *_lookup(COUNTERS, NET_TO_SERVICE, R9, "next"),
        and_(R7, 1), lsh(R7, 3), add(R7, R9),  # the frame's epoch's arrived slot
        ldx(DW, R1, R7, 8 * SLOT_ARRIVED), add(R1, 1), stx(DW, R7, 8 * SLOT_ARRIVED, R1),
        *_wire_length(R7), *_bump(SLOT_FRAMES), *_bump(SLOT_BYTES, R7),
        Label("next"), mov(R0, TC_ACT_NEXT), exit_(),
    ))


# --- EOE, TAP -> net ------------------------------------------------------------------

def _encapsulate(template: bytes, net_ifindex: int) -> list[Item]:
    """Pad, push the header, check the MTU, count and send the skb in R6 (label "encap").

    The inner frame's wire length (with a tag the stack keeps in metadata)
    stays in R7. Drops in the order userspace meets them: too big for the
    length field, too big for the MTU (EMSGSIZE), refused by the kernel
    (ENETDOWN and the like; userspace saw a down interface first, so a
    frame both too big and sent while it is down counts as too big here).
    """
    head, length_at, tail_at = eoe.HEADER_LEN, eoe.LENGTH_OFFSET, eoe.LENGTH_OFFSET + 2
    tagged_head = head + vlan.TAG_LEN
    tpid = int.from_bytes(template[vlan.TPID_OFFSET:vlan.TPID_OFFSET + 2], "big")
    # A raw socket lets a frame with an 802.1Q tag at offset 12 exceed the MTU by the tag (spec §5).
    mtu_allowance = -vlan.TAG_LEN if tpid == vlan.TPID_8021Q else 0
    pad_buffer = -64 - 16
    saved_tag = -16
    return [
        Label("encap"),
        *_lookup(COUNTERS, SERVICE_TO_NET, R9, "shot"),
        ldx(W, R7, R6, skb("len")), ldx(W, R1, R6, skb("vlan_present")),
        jump_if(R1, "==", 0, "measured"), add(R7, vlan.TAG_LEN),
        Label("measured"),
        jump_if(R7, ">", eoe.MAX_INNER, "too_big"),
        jump_if(R7, ">=", eoe.MIN_INNER, "padded"),
        # Zero-pad to MIN_INNER: grow the tail, then write zeros over the new bytes.
        *[st(DW, FP, pad_buffer + i, 0) for i in range(0, 64, 8)],
        mov(R1, R6), ldx(W, R2, R6, skb("len")), add(R2, eoe.MIN_INNER), sub(R2, R7), mov(R3, 0),
        call("skb_change_tail"), jump_if(R0, "!=", 0, "other"),
        mov(R4, eoe.MIN_INNER), sub(R4, R7),
        mov(R1, R6), ldx(W, R2, R6, skb("len")), sub(R2, R4), mov(R3, FP), add(R3, pad_buffer), mov(R5, 0),
        call("skb_store_bytes"), jump_if(R0, "!=", 0, "other"),
        mov(R7, eoe.MIN_INNER),
        Label("padded"),
        ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "untagged"),
        # The stack keeps the inner tag in metadata: take it off now, put it back inline behind the header.
        ldx(W, R1, R6, skb("protocol")),
        jump_if(R1, "==", native(vlan.TPID_8021Q, 2), "other"),  # stacked tags: pop would take the next one
        jump_if(R1, "==", native(vlan.TPID_8021AD, 2), "other"),
        ldx(W, R1, R6, skb("vlan_proto")), stx(W, FP, saved_tag, R1),
        ldx(W, R1, R6, skb("vlan_tci")), stx(W, FP, saved_tag + 4, R1),
        mov(R1, R6), call("skb_vlan_pop"), jump_if(R0, "!=", 0, "other"),
        mov(R1, R6), mov(R2, tagged_head), mov(R3, 0), call("skb_change_head"), jump_if(R0, "!=", 0, "other"),
        ldx(W, R2, R6, skb("data")), ldx(W, R3, R6, skb("data_end")),
        *_bounds(R2, R3, tagged_head + vlan.TPID_OFFSET, "other"),
        *[item for at in range(0, vlan.TPID_OFFSET, 4)
          for item in (ldx(W, R1, R2, tagged_head + at), stx(W, R2, head + at, R1))],
        ldx(W, R1, FP, saved_tag), stx(H, R2, head + vlan.TPID_OFFSET, R1),
        ldx(W, R1, FP, saved_tag + 4), to_be(R1, 16), stx(H, R2, head + vlan.TCI_OFFSET, R1),
        goto("header"),
        Label("untagged"),
        mov(R1, R6), mov(R2, head), mov(R3, 0), call("skb_change_head"), jump_if(R0, "!=", 0, "other"),
        ldx(W, R2, R6, skb("data")), ldx(W, R3, R6, skb("data_end")),
        *_bounds(R2, R3, head, "other"),
        Label("header"),
        *_aligned_stores(R2, 0, template[:length_at]),
        mov(R1, R7), add(R1, eoe.AFTER_LENGTH), to_be(R1, 16), stx(H, R2, length_at, R1),
        *_aligned_stores(R2, tail_at, template[tail_at:head]),
        st(W, FP, -8, 0),
        mov(R1, R6), mov(R2, net_ifindex), mov(R3, FP), add(R3, -8), mov(R4, mtu_allowance), mov(R5, 0),
        call("check_mtu"), jump_if(R0, "!=", 0, "too_big"),
        add(R7, head),
        *_send(net_ifindex, 0),
        *_drop("too_big", DropReason.TOO_BIG, TC_ACT_SHOT),
        *_drop("other", DropReason.OTHER, TC_ACT_SHOT),
        Label("shot"), mov(R0, TC_ACT_SHOT), exit_(),
    ]


def eoe_to_segmenter_tc(segmenter_ifindex: int) -> ProgramSpec:
    """TAP egress: every frame goes through the segmenter, where the kernel finishes it first.

    GSO skbs and IP frames need it: a local TCP socket builds super-frames
    and leaves its checksum to the device whatever the device's offload
    settings, and the kernel segments and checksums only after tc egress.
    Other frames take the same road so that none overtakes another.
    """
    return ProgramSpec("eoe_to_seg", PROG_TYPE_SCHED_CLS, (
        mov32(R2, SEGMENT_MARK), stx(W, R1, skb("mark"), R2),
        mov(R1, segmenter_ifindex), mov(R2, 0), call("redirect"), exit_(),
    ))


def eoe_encap_tc(template: bytes, net_ifindex: int) -> ProgramSpec:
    """The segmenter's far end: encapsulate what the TAP sent through it, drop anything else."""
    return ProgramSpec("eoe_encap", PROG_TYPE_SCHED_CLS, (
        mov(R6, R1),
        ldx(W, R1, R6, skb("mark")), jump_if32(R1, "!=", SEGMENT_MARK, "foreign"),
        mov(R1, 0), stx(W, R6, skb("mark"), R1),
        goto("encap"),
        Label("foreign"), mov(R0, TC_ACT_SHOT), exit_(),
        *_encapsulate(template, net_ifindex),
    ))


# --- DHCP -------------------------------------------------------------------------------

def _dhcp_client_checks() -> list[Item]:
    """wire.vlan.is_dhcp_client_frame at tc ingress, where the outer tag is always in skb metadata."""
    ip = vlan.TPID_OFFSET + 2  # behind the lifted tag, the tagged EtherType sits at 12
    return [
        ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "filtered"),
        ldx(W, R1, R6, skb("vlan_proto")), jump_if(R1, "!=", native(vlan.TPID_8021Q, 2), "filtered"),
        ldx(W, R1, R6, skb("vlan_tci")), and_(R1, vlan.VID_MASK),
        jump_if(R1, "==", REFUSED_DHCP_VID, "filtered"),
        ldx(W, R2, R6, skb("data")), ldx(W, R3, R6, skb("data_end")),
        *_bounds(R2, R3, ip + IPV4_MIN_HEADER, "filtered"),
        ldx(H, R1, R2, vlan.TPID_OFFSET), jump_if(R1, "!=", native(vlan.ETHERTYPE_IPV4, 2), "filtered"),
        ldx(B, R1, R2, ip + IPV4_PROTOCOL), jump_if(R1, "!=", vlan.IPPROTO_UDP, "filtered"),
        ldx(H, R1, R2, ip + IPV4_FRAGMENT),
        jump_if(R1, "&", native(IPV4_FRAGMENT_OFFSET_MASK, 2), "filtered"),
        ldx(B, R1, R2, ip), and_(R1, 0x0F), lsh(R1, 2),  # IHL: IP options move the UDP header
        add(R2, R1), *_bounds(R2, R3, ip + UDP_DPORT + 2, "filtered"),
        ldx(H, R1, R2, ip + UDP_DPORT), jump_if(R1, "!=", native(vlan.DHCP_CLIENT_PORT, 2), "filtered"),
    ]


def _vid_rewrite(vid_map: Callable[[int], int]) -> list[Item]:
    """VID <- vid_map(VID) for a lifted 0x8100 tag, PCP and DEI kept: pop, then push the new TCI.

    The map is one step (-1 or +1) with one wrap-around and a few fixed
    points, all read off the pure function, so it cannot drift from it.
    """
    fixed = sorted(vlan.UNMAPPED_VIDS)
    step = vid_map(2) - 2
    wraps_from = next(v for v in range(1, vlan.VID_MASK) if v not in fixed and vid_map(v) != v + step)
    wraps_to = vid_map(wraps_from)
    if any(vid_map(v) != v for v in fixed):
        raise ValueError("a VID map must leave the unmapped VIDs alone")
    return [
        ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "send"),
        ldx(W, R1, R6, skb("vlan_proto")), jump_if(R1, "!=", native(vlan.TPID_8021Q, 2), "send"),
        ldx(W, R7, R6, skb("vlan_tci")), mov(R1, R7), and_(R1, vlan.VID_MASK),
        *[jump_if(R1, "==", v, "send") for v in fixed],
        jump_if(R1, "==", wraps_from, "wrap"),
        add(R1, step), goto("mapped"),
        Label("wrap"), mov(R1, wraps_to),
        Label("mapped"),
        and_(R7, ~vlan.VID_MASK & 0xFFFF), or_(R7, R1),
        mov(R1, R6), call("skb_vlan_pop"), jump_if(R0, "!=", 0, "other"),
        mov(R1, R6), mov(R2, native(vlan.TPID_8021Q, 2)), mov(R3, R7), call("skb_vlan_push"),
        jump_if(R0, "!=", 0, "other"),
    ]


def dhcp_tc(direction: int, vid_map: Callable[[int], int], to_ifindex: int, accept_filter: bool,
            rule: AcceptRule) -> ProgramSpec:
    """One side of the DHCP relay: filters (net side: -F, then the acceptance rule), VID rewrite, redirect."""
    items: list[Item] = [
        mov(R6, R1),
        *_lookup(COUNTERS, direction, R9, "next"),
        *(_dhcp_client_checks() if accept_filter else []),
        *(_accept_rule(rule) if rule else []),
        # MTU first, while the frame is untouched (a refused frame goes on to the host's stack as it came).
        mov(R4, 0), ldx(W, R1, R6, skb("vlan_present")), jump_if(R1, "==", 0, "mtu"),
        ldx(W, R1, R6, skb("vlan_proto")), jump_if(R1, "==", native(vlan.TPID_8021Q, 2), "mtu"),
        mov(R4, vlan.TAG_LEN),  # only an 802.1Q tag earns a raw socket the 4 extra bytes
        Label("mtu"),
        st(W, FP, -8, 0), mov(R1, R6), mov(R2, to_ifindex), mov(R3, FP), add(R3, -8), mov(R5, 0),
        call("check_mtu"), jump_if(R0, "!=", 0, "too_big"),
        *_vid_rewrite(vid_map),
        Label("send"),
        *_wire_length(R7),
        *_send(to_ifindex, 0),
        *_drop("too_big", DropReason.TOO_BIG, TC_ACT_NEXT),
        *_drop("other", DropReason.OTHER, TC_ACT_SHOT),
        *(_drop("filtered", DropReason.FILTERED, TC_ACT_NEXT) if accept_filter or rule else []),
        Label("next"), mov(R0, TC_ACT_NEXT), exit_(),
    ]
    name = "eoe_dhcp_down" if direction == NET_TO_SERVICE else "eoe_dhcp_up"
    return ProgramSpec(name, PROG_TYPE_SCHED_CLS, tuple(items))
