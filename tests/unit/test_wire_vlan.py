"""The DHCP relay's VID rewrite, tag restoration and filter rule (no privileges)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eoe_filter.wire import vlan


def tagged(tci: int, tpid: int = 0x8100, rest: bytes = bytes(50)) -> bytes:
    return bytes.fromhex("ffffffffffff020000000001") + struct.pack("!HH", tpid, tci) + rest


@pytest.mark.parametrize(("oam", "dhcp"), [(1, 4093), (2, 1), (100, 99), (4093, 4092)])
def test_vid_mapping_and_wraps(oam, dhcp):
    assert vlan.oam_to_dhcp_vid(oam) == dhcp
    assert vlan.dhcp_to_oam_vid(dhcp) == oam


def test_mapping_is_a_bijection_on_1_to_4093():
    image = {vlan.oam_to_dhcp_vid(v) for v in range(1, 4094)}
    assert image == set(range(1, 4094))
    assert all(vlan.dhcp_to_oam_vid(vlan.oam_to_dhcp_vid(v)) == v for v in range(1, 4094))


@pytest.mark.parametrize("vid", [0, 4094, 4095])
def test_reserved_vids_pass_unchanged(vid):
    frame = tagged(0xA000 | vid)
    assert vlan.rewrite_vid(frame, vlan.oam_to_dhcp_vid) == frame
    assert vlan.rewrite_vid(frame, vlan.dhcp_to_oam_vid) == frame


def test_pcp_and_dei_are_kept():
    out = vlan.rewrite_vid(tagged(0xB000 | 1), vlan.oam_to_dhcp_vid)
    assert out[14:16] == struct.pack("!H", 0xB000 | 4093)
    out = vlan.rewrite_vid(tagged(0x7000 | 4093), vlan.dhcp_to_oam_vid)
    assert out[14:16] == struct.pack("!H", 0x7000 | 1)


def test_8021ad_and_untagged_frames_pass_unchanged():
    qinq = tagged(100, tpid=0x88A8)
    assert vlan.rewrite_vid(qinq, vlan.oam_to_dhcp_vid) == qinq
    untagged = bytes(12) + b"\x08\x00" + bytes(50)
    assert vlan.rewrite_vid(untagged, vlan.oam_to_dhcp_vid) == untagged
    assert vlan.rewrite_vid(b"\x00" * 10, vlan.oam_to_dhcp_vid) == b"\x00" * 10


@given(st.binary(max_size=100))
def test_rewrite_never_raises_and_keeps_length(data):
    assert len(vlan.rewrite_vid(data, vlan.oam_to_dhcp_vid)) == len(data)
    assert isinstance(vlan.is_dhcp_client_frame(data), bool)


@given(st.integers(0, 0xFFFF), st.binary(min_size=2, max_size=60))
def test_restore_tag_reinserts_the_lifted_tag(tci, payload):
    wire = tagged(tci, rest=payload)
    buf = bytearray(4) + bytearray(wire[:12] + wire[16:])
    start = vlan.restore_tag_into(buf, 4, 0x8100, tci)
    assert start == 0 and bytes(buf) == wire


def dhcp_frame(vid: int = 100, proto: int = 17, frag: int = 0, ihl: int = 5, dport: int = 68,
               tpid: int = 0x8100, ethertype: int = 0x0800) -> bytes:
    ip = bytes([0x40 | ihl, 0]) + struct.pack("!HHH", 0, 0, frag) + bytes([64, proto]) + bytes(10)
    ip += bytes(4 * ihl - 20)
    udp = struct.pack("!HHHH", 67, dport, 8, 0)
    return tagged(vid, tpid=tpid, rest=struct.pack("!H", ethertype) + ip + udp + bytes(20))


def test_dhcp_filter_rule():
    assert vlan.is_dhcp_client_frame(dhcp_frame())
    assert vlan.is_dhcp_client_frame(dhcp_frame(ihl=15))
    assert vlan.is_dhcp_client_frame(dhcp_frame(frag=0x2000))  # first fragment (MF set, offset 0)
    assert not vlan.is_dhcp_client_frame(dhcp_frame(frag=0x0001))
    assert not vlan.is_dhcp_client_frame(dhcp_frame(vid=4094))
    assert not vlan.is_dhcp_client_frame(dhcp_frame(proto=6))
    assert not vlan.is_dhcp_client_frame(dhcp_frame(dport=67))
    assert not vlan.is_dhcp_client_frame(dhcp_frame(tpid=0x88A8))
    assert not vlan.is_dhcp_client_frame(dhcp_frame(ethertype=0x86DD))
    assert not vlan.is_dhcp_client_frame(dhcp_frame()[:40])
