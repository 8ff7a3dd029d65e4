"""The scapy EOE layer builds and reads frames byte-for-byte as wire-format.md section 1 says."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, LLC, SNAP, STP, Dot1Q, Dot3, Ether
from scapy.packet import Padding, Raw

from eoe_filter.contrib.scapy_eoe import EOE, is_eoe_frame, itf_from_pon_gem

ARP_REQUEST = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(
    hwsrc="02:00:00:00:00:01", psrc="192.0.2.1", pdst="192.0.2.2"
)


def test_default_header_on_a_42_byte_arp_request() -> None:
    inner = bytes(ARP_REQUEST)
    assert len(inner) == 42
    raw = bytes(EOE() / ARP_REQUEST)
    assert len(raw) == 86
    assert raw[0:6] == bytes.fromhex("0600000000f8")
    assert raw[6:12] == bytes.fromhex("060000000078")
    assert raw[12:14] == b"\x81\x00"
    assert raw[14:16] == b"\x0f\xfe"
    assert raw[16:18] == b"\x00\x44"
    assert raw[18] == 0x80
    assert raw[19:21] == b"\x00\x00"
    assert raw[21] == 0x00
    assert raw[22:64] == inner
    assert raw[64:] == bytes(22)  # zero padding of the inner frame to 64


def test_non_default_header_fields_land_at_their_offsets() -> None:
    inner = (
        Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
        / IP(dst="192.0.2.77")
        / UDP()
        / Raw(b"x" * 60)
    )
    frame = (
        EOE(
            dst="02:11:22:33:44:55",
            src="02:66:77:88:99:aa",
            prio=5,
            dei=1,
            vlan=123,
            op_code=1,
            downstream=1,
            flag=5,
            itf=itf_from_pon_gem(3, 0x456),
            protocol_id=0x9C,
        )
        / inner
    )
    raw = bytes(frame)
    inner_len = len(bytes(inner))
    assert inner_len > 64 and len(raw) == 22 + inner_len  # no padding when long enough
    assert raw[0:12] == bytes.fromhex("0211223344550266778899aa")
    assert raw[14:16] == (5 << 13 | 1 << 12 | 123).to_bytes(2, "big") == b"\xb0\x7b"
    assert raw[16:18] == (4 + inner_len).to_bytes(2, "big")
    assert raw[18] == 0x1D  # op_code 1, downstream 1, flag 5
    assert raw[19:21] == b"\x34\x56"
    assert raw[21] == 0x9C


def test_ether_decodes_eoe_with_every_field_and_the_inner_frame() -> None:
    raw = bytes(
        EOE(prio=2, dei=1, vlan=7, op_code=1, downstream=1, flag=3, itf=0xABCD, protocol_id=4)
        / Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
        / IP(dst="198.51.100.9")
        / UDP(sport=1234, dport=4000)
    )
    pkt = Ether(raw)
    assert isinstance(pkt, EOE)
    assert (pkt.dst, pkt.src, pkt.tpid) == ("06:00:00:00:00:f8", "06:00:00:00:00:78", 0x8100)
    assert (pkt.prio, pkt.dei, pkt.vlan, pkt.len) == (2, 1, 7, 68)
    assert (pkt.op_code, pkt.downstream, pkt.flag) == (1, 1, 3)
    assert (pkt.itf, pkt.pon, pkt.gem_port, pkt.protocol_id) == (0xABCD, 0xA, 0xBCD, 4)
    assert isinstance(pkt.payload, Ether)
    assert pkt[IP].dst == "198.51.100.9" and pkt[UDP].dport == 4000
    assert bytes(pkt) == raw


def test_explicit_length_is_kept() -> None:
    raw = bytes(EOE(len=200) / ARP_REQUEST)
    assert raw[16:18] == b"\x00\xc8"
    assert not is_eoe_frame(raw)  # a length that does not match the frame is not EOE


def test_largest_inner_frame_fits_and_one_more_byte_is_refused() -> None:
    inner = Ether() / Raw(bytes(65531 - 14))
    assert bytes(EOE() / inner)[16:18] == b"\xff\xff"
    with pytest.raises(ValueError, match="length field would wrap"):
        bytes(EOE() / Ether() / Raw(bytes(65532 - 14)))


def test_itf_pon_gem_port_helper_checks_ranges() -> None:
    assert itf_from_pon_gem(0xF, 0xFFF) == 0xFFFF
    with pytest.raises(ValueError):
        itf_from_pon_gem(16, 0)
    with pytest.raises(ValueError):
        itf_from_pon_gem(0, 0x1000)


def test_minimum_size_padding_goes_to_padding_not_to_the_inner_frame() -> None:
    inner = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5) / Raw(b"abcdefghij"))
    header = bytes(EOE(len=4 + len(inner)))[:22]
    raw = header + inner + bytes(60 - 22 - len(inner))  # NIC padding to 60 bytes
    pkt = Ether(raw)
    assert isinstance(pkt, EOE)
    assert pkt[Raw].load == b"abcdefghij"
    assert pkt[Padding].load == bytes(60 - 22 - len(inner))


def test_ordinary_802_1q_frame_is_not_eoe() -> None:
    raw = bytes(Ether(dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / IP(dst="198.51.100.1") / UDP())
    pkt = Ether(raw)
    assert type(pkt) is Ether
    assert pkt[Dot1Q].vlan == 7 and pkt[IP].dst == "198.51.100.1"


def test_pvst_bpdu_with_a_matching_length_is_not_eoe() -> None:
    llc = bytes(LLC() / SNAP(OUI=0x0C, code=0x010B) / STP())
    raw = bytes(Ether(dst="01:00:0c:cc:cc:cd", src="02:00:00:00:00:01") / Dot1Q(vlan=7, type=len(llc))) + llc
    assert len(raw) - 18 == len(llc)
    assert type(Ether(raw)) is Ether


@pytest.mark.parametrize(
    "raw",
    [
        bytes(Ether(dst="02:00:00:00:00:02") / IP() / UDP()),
        bytes(Ether(dst="02:00:00:00:00:02", type=0x88A8) / Raw(bytes(82))),  # 802.1ad TPID
        bytes(EOE() / ARP_REQUEST)[:35],  # shorter than header + inner Ethernet header
    ],
)
def test_other_frames_are_not_eoe(raw: bytes) -> None:
    assert not is_eoe_frame(raw)
    assert not isinstance(Ether(raw), EOE)


def test_plain_802_3_still_decodes_as_dot3() -> None:
    raw = bytes(Dot3(dst="02:00:00:00:00:02") / LLC() / Raw(b"hello"))
    assert isinstance(Ether(raw), Dot3)


def test_importing_the_package_does_not_import_scapy_eoe() -> None:
    code = (
        "import sys, eoe_filter, eoe_filter.contrib; "
        "assert 'eoe_filter.contrib.scapy_eoe' not in sys.modules; "
        "assert 'scapy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@given(
    dst=st.binary(min_size=6, max_size=6),
    src=st.binary(min_size=6, max_size=6),
    tpid=st.sampled_from([0x8100, 0x88A8, 0x9100]),
    prio=st.integers(0, 7),
    dei=st.integers(0, 1),
    vlan=st.integers(0, 0xFFF),
    op_code=st.integers(0, 0xF),
    downstream=st.integers(0, 1),
    flag=st.integers(0, 7),
    itf=st.integers(0, 0xFFFF),
    protocol_id=st.integers(0, 0xFF),
    load=st.binary(max_size=200),
)
def test_round_trip_over_all_field_values(
    dst: bytes,
    src: bytes,
    tpid: int,
    prio: int,
    dei: int,
    vlan: int,
    op_code: int,
    downstream: int,
    flag: int,
    itf: int,
    protocol_id: int,
    load: bytes,
) -> None:
    fields: dict[str, Any] = dict(
        dst=dst.hex(":"),
        src=src.hex(":"),
        tpid=tpid,
        prio=prio,
        dei=dei,
        vlan=vlan,
        op_code=op_code,
        downstream=downstream,
        flag=flag,
        itf=itf,
        protocol_id=protocol_id,
    )
    inner = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5) / Raw(load)
    raw = bytes(EOE(**fields) / inner)
    padded_len = max(64, 14 + len(load))
    assert len(raw) == 22 + padded_len
    assert int.from_bytes(raw[16:18], "big") == 4 + padded_len
    assert raw[22 : 22 + 14 + len(load)] == bytes(inner)

    pkt = EOE(raw)
    assert {name: pkt.getfieldval(name) for name in fields} == fields
    assert pkt.len == 4 + padded_len
    assert pkt[Ether].type == 0x88B5
    assert bytes(pkt) == raw

    llc_lookalike = raw[18:21] in (b"\xaa\xaa\x03", b"\x42\x42\x03")
    assert isinstance(Ether(raw), EOE) == (tpid == 0x8100 and not llc_lookalike)
