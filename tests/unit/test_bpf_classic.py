"""The classic BPF assembler and the relays' two filters, run in a kernel-faithful interpreter (no privileges).

Every check compares the program, fed the frame as a packet socket sees it
(outer tag lifted into metadata), with the pure predicate on the wire view.
"""

from __future__ import annotations

import struct

import pytest
from cbpf_vm import accepts, run, socket_view
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from eoe_filter.link import bpf_classic as bpf
from eoe_filter.link.bpf_classic import (
    ACCEPT_WHOLE,
    BPF_ABS,
    BPF_B,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_RET,
    BPF_W,
    Insn,
    Label,
    assemble,
    jump,
    stmt,
)
from eoe_filter.wire.eoe import CONTROL_PROTOCOL, EoeHeader, OpCode, accepts_downstream
from eoe_filter.wire.vlan import (
    DHCP_CLIENT_PORT,
    ETHERTYPE_IPV4,
    IPPROTO_UDP,
    TPID_8021AD,
    TPID_8021Q,
    is_dhcp_client_frame,
)

EOE = bpf.eoe_downstream_filter()
DHCP = bpf.dhcp_client_filter()
U16 = st.integers(0, 0xFFFF)
IP_AT = 18  # wire offset of the IPv4 header behind one tag


def agree(program: bpf.Program, predicate, frame: bytes, expected: bool) -> None:  # type: ignore[no-untyped-def]
    """Predicate, lifted view and inline view all give `expected`."""
    assert predicate(frame) is expected
    assert accepts(program, frame) is expected
    assert (run(program, frame, None, 0) != 0) is expected


# --- the assembler -----------------------------------------------------------

def test_labels_resolve_to_forward_offsets():
    program = assemble([
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 1, jt="yes", jf="no"),
        Label("no"), stmt(BPF_RET | BPF_K, 0),
        Label("yes"), stmt(BPF_RET | BPF_K, 7),
    ])
    assert program[1] == Insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 1)
    assert run(program, b"\x01") == 7
    assert run(program, b"\x02") == 0


@pytest.mark.parametrize(("source", "message"), [
    ([jump(BPF_JMP | BPF_JEQ, 0, jt="nowhere"), stmt(BPF_RET)], "undefined label 'nowhere'"),
    ([Label("a"), Label("a"), stmt(BPF_RET)], "defined twice"),
    ([Label("back"), stmt(BPF_RET), jump(BPF_JMP | BPF_JEQ, 0, jt="back"), stmt(BPF_RET)], "out of range"),
    ([jump(BPF_JMP | BPF_JEQ, 0, jt="far"), *[stmt(BPF_LD)] * 256, Label("far"), stmt(BPF_RET)], "out of range"),
    ([stmt(BPF_LD)], "last instruction must be a return"),
    ([], "1..4096"),
])
def test_assembler_refuses_what_the_kernel_would(source, message):
    with pytest.raises(ValueError, match=message):
        assemble(source)


def test_longest_forward_jump_is_255():
    program = assemble([jump(BPF_JMP | BPF_JEQ, 0, jt="far"), *[stmt(BPF_LD)] * 255,
                        Label("far"), stmt(BPF_RET)])
    assert program[0].jt == 255


@pytest.mark.parametrize("fields", [(0x10000, 0, 0, 0), (0, 256, 0, 0), (0, 0, -1, 0), (0, 0, 0, 1 << 32)])
def test_instruction_fields_are_range_checked(fields):
    with pytest.raises(ValueError):
        Insn(*fields)


def test_packed_in_native_layout():
    program = bpf.eoe_downstream_filter()
    packed = bpf.pack(program)
    assert bpf.SOCK_FILTER.size == 8
    assert packed == b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)
    first = struct.pack("=HBBI", BPF_LD | BPF_W | BPF_ABS, 0, 0, 0x100000000 + bpf.SKF_AD_OFF + 48)
    assert packed[:8] == first


def test_whole_frames_are_accepted_not_truncated():
    frame = eoe(op_code=1, inner=tagged_inner(0x0800, 60_000))
    assert run(EOE, *socket_view(frame)) == ACCEPT_WHOLE == 0xFFFFFFFF


# --- the EOE filter ----------------------------------------------------------

def tagged_inner(ethertype: int, size: int = 60) -> bytes:
    head = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=7, type=ethertype))
    return head + bytes(size - len(head))


def eoe(op_code: int, inner: bytes, tpid: int = TPID_8021Q) -> bytes:
    return EoeHeader(tpid=tpid, op_code=op_code, downstream=1).pack(len(inner) + 4) + inner


@pytest.mark.parametrize(("frame", "expected"), [
    (eoe(OpCode.SWITCH_DOWNSTREAM, tagged_inner(ETHERTYPE_IPV4)), True),
    (eoe(OpCode.A2A_SWITCH, tagged_inner(ETHERTYPE_IPV4)), False),
    (eoe(OpCode.SWITCH_DOWNSTREAM, tagged_inner(CONTROL_PROTOCOL)), False),
    (eoe(0, tagged_inner(ETHERTYPE_IPV4)), False),
    (eoe(15, tagged_inner(ETHERTYPE_IPV4)), False),
    (eoe(1, tagged_inner(ETHERTYPE_IPV4), tpid=TPID_8021AD), True),  # an S-tag is lifted too
    (eoe(1, tagged_inner(ETHERTYPE_IPV4), tpid=0x0800), True),  # not a tag: nothing lifted, inline offsets
    (eoe(1, tagged_inner(CONTROL_PROTOCOL), tpid=0x0800), False),
], ids=["op1", "op8", "control-protocol", "op0", "op15", "s-tag", "untagged", "untagged-control"])
def test_eoe_examples(frame, expected):
    agree(EOE, accepts_downstream, frame, expected)


def untagged_ipv4_inner(total_length: int) -> bytes:
    return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                 / IP(dst="192.0.2.2") / Raw(bytes(total_length - 20)))


@pytest.mark.parametrize(("total_length", "expected"), [(2219, False), (2218, True), (2220, True)])
def test_ipv4_of_2219_bytes_is_refused_as_in_the_original(total_length, expected):
    frame = eoe(1, untagged_ipv4_inner(total_length))
    assert frame[38:40] == struct.pack("!H", total_length)
    agree(EOE, accepts_downstream, frame, expected)


@pytest.mark.parametrize(("size", "expected"), [(0, False), (14, False), (19, False), (30, False),
                                                (39, False), (40, True), (41, True)])
def test_eoe_runts(size, expected):
    frame = eoe(1, bytes(64))[:size]
    assert accepts(EOE, frame) is expected is accepts_downstream(frame)


# --- the DHCP filter ---------------------------------------------------------

def offer(vid: int = 100, dport: int = DHCP_CLIENT_PORT, pcp: int = 0, dei: int = 0, **ip: object) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:67") / Dot1Q(prio=pcp, dei=dei, vlan=vid)
                 / IP(src="192.0.2.1", dst="255.255.255.255", **ip) / UDP(sport=67, dport=dport) / Raw(b"x" * 40))


@pytest.mark.parametrize(("vid", "expected"), [(0, True), (1, True), (100, True), (4093, True),
                                               (4094, False), (4095, True)])
def test_dhcp_vids(vid, expected):
    agree(DHCP, is_dhcp_client_frame, offer(vid), expected)
    agree(DHCP, is_dhcp_client_frame, offer(vid, pcp=7, dei=1), expected)


def test_dhcp_ports():
    agree(DHCP, is_dhcp_client_frame, offer(dport=68), True)
    agree(DHCP, is_dhcp_client_frame, offer(dport=67), False)
    agree(DHCP, is_dhcp_client_frame, offer(dport=68 + 256), False)


DHCP_REFUSED = {
    "untagged": Ether() / IP() / UDP(dport=68),
    "s-tag": Ether() / Dot1AD(vlan=100) / IP() / UDP(dport=68),
    "s-tag-then-c-tag": Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=100) / IP() / UDP(dport=68),
    "c-tag-then-c-tag": Ether() / Dot1Q(vlan=100) / Dot1Q(vlan=100) / IP() / UDP(dport=68),
    "tcp": Ether() / Dot1Q(vlan=100) / IP() / TCP(dport=68),
    "icmp": Ether() / Dot1Q(vlan=100) / IP() / ICMP(),
    "arp-ethertype": Ether() / Dot1Q(vlan=100, type=0x0806) / IP() / UDP(dport=68),
    "later-fragment": Ether() / Dot1Q(vlan=100) / IP(frag=185, proto=IPPROTO_UDP) / UDP(dport=68),
    "last-fragment-offset-1": Ether() / Dot1Q(vlan=100) / IP(frag=1, proto=IPPROTO_UDP) / UDP(dport=68),
}


@pytest.mark.parametrize("name", DHCP_REFUSED)
def test_dhcp_refused(name):
    agree(DHCP, is_dhcp_client_frame, bytes(DHCP_REFUSED[name]), False)


@pytest.mark.parametrize("flags", ["MF", "DF", 0])
def test_first_fragment_passes(flags):
    agree(DHCP, is_dhcp_client_frame, offer(flags=flags, frag=0), True)


@pytest.mark.parametrize("ihl", range(6, 16))
def test_ip_options_move_the_udp_port(ihl):
    options = [IPOption_NOP()] * (4 * (ihl - 5))
    frame = offer(options=options)
    assert frame[18] & 0x0F == ihl
    agree(DHCP, is_dhcp_client_frame, frame, True)
    agree(DHCP, is_dhcp_client_frame, offer(dport=67, options=options), False)


@pytest.mark.parametrize("cut", [12, 17, 18, 20, 37, 38, 40, 41])
def test_truncated_dhcp_frames(cut):
    """The UDP destination port ends at wire offset 42."""
    agree(DHCP, is_dhcp_client_frame, offer()[:cut], False)


@pytest.mark.parametrize("ihl", [0, 2, 3])
@pytest.mark.parametrize("size", [30, 34, 37, 38, 45])
def test_ihl_below_5_needs_a_whole_ip_header_anyway(ihl, size):
    """The predicate wants 20 IP header bytes whatever IHL says; the filter's length test matches it."""
    frame = bytearray(offer()[:size])
    frame[IP_AT] = 0x40 | ihl
    port_at = IP_AT + 4 * ihl + 2
    frame[port_at:port_at + 2] = DHCP_CLIENT_PORT.to_bytes(2, "big")
    agree(DHCP, is_dhcp_client_frame, bytes(frame), size >= IP_AT + 20)


def test_tagged_frames_too_short_to_untag_never_reach_the_socket():
    assert socket_view(offer()[:19]) is None
    assert socket_view(offer()[:20]) is not None


# --- properties: program(socket view) == predicate(wire view) -----------------

def weighted(common: st.SearchStrategy[int], rare: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """`common` 7 times in 8: each field is then mostly valid, so accepted frames are frequent."""
    return st.integers(0, 7).flatmap(lambda i: rare if i == 0 else common)


@st.composite
def eoe_frames(draw: st.DrawFn) -> bytes:
    header = EoeHeader(
        tpid=draw(weighted(st.sampled_from([TPID_8021Q, TPID_8021AD]), U16)),
        pcp=draw(st.integers(0, 7)), dei=draw(st.integers(0, 1)), vid=draw(st.integers(0, 0xFFF)),
        op_code=draw(weighted(st.just(OpCode.SWITCH_DOWNSTREAM), st.integers(0, 15))),
        downstream=draw(st.integers(0, 1)), flag=draw(st.integers(0, 7)),
        itf=draw(U16), protocol_id=draw(st.integers(0, 0xFF)))
    inner = bytearray(draw(st.binary(min_size=draw(weighted(st.integers(18, 80), st.integers(0, 17))),
                                     max_size=80)))
    if len(inner) >= 18:
        inner[16:18] = draw(weighted(U16, st.just(CONTROL_PROTOCOL))).to_bytes(2, "big")
    return header.pack(draw(U16)) + bytes(inner)


@st.composite
def dhcp_frames(draw: st.DrawFn) -> bytes:
    def u16(common: st.SearchStrategy[int]) -> bytes:
        return draw(weighted(common, U16)).to_bytes(2, "big")

    ihl = draw(weighted(st.just(5), st.integers(0, 15)))
    ip = bytearray(draw(st.binary(min_size=20, max_size=20)))
    ip[0] = draw(weighted(st.just(4), st.integers(0, 15))) << 4 | ihl
    ip[6:8] = u16(st.sampled_from([0, 0x4000, 0x2000]))
    ip[9] = draw(weighted(st.just(IPPROTO_UDP), st.integers(0, 0xFF)))
    options = draw(st.binary(min_size=4 * max(0, ihl - 5), max_size=4 * max(0, ihl - 5)))
    tci = draw(st.integers(0, 0xF)) << 12 | draw(weighted(st.integers(0, 0xFFF), st.just(0xFFE)))
    frame = bytearray(draw(st.binary(min_size=12, max_size=12)) + u16(st.just(TPID_8021Q))
                      + tci.to_bytes(2, "big") + u16(st.just(ETHERTYPE_IPV4)) + ip + options
                      + draw(st.binary(min_size=4, max_size=24)))
    # The port goes where the predicate looks, even when IHL < 5 puts it inside the IP header.
    port_at = IP_AT + 4 * ihl + 2
    frame[port_at:port_at + 2] = u16(st.just(DHCP_CLIENT_PORT))
    cut = draw(weighted(st.just(len(frame)), st.integers(0, len(frame))))
    return bytes(frame[:cut])


def check_property(program: bpf.Program, predicate, frame: bytes, stale_tpid: int) -> None:  # type: ignore[no-untyped-def]
    expected = predicate(frame)
    assert accepts(program, frame) is expected
    # Tag left inline (no lift): the program must ignore SKF_AD_VLAN_TPID's stale value.
    assert (run(program, frame, None, stale_tpid) != 0) is expected
    view = socket_view(frame)
    if view is not None:
        assert run(program, *view) in (0, ACCEPT_WHOLE)


@settings(max_examples=1500)
@given(st.one_of(eoe_frames(), st.binary(max_size=60)), U16)
def test_eoe_filter_matches_predicate(frame, stale_tpid):
    check_property(EOE, accepts_downstream, frame, stale_tpid)


@settings(max_examples=1500)
@given(st.one_of(dhcp_frames(), st.binary(max_size=60)), U16)
def test_dhcp_filter_matches_predicate(frame, stale_tpid):
    check_property(DHCP, is_dhcp_client_frame, frame, stale_tpid)
