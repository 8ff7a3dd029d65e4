"""The EOE header codec against the spec's byte layout (no privileges)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eoe_filter.wire import eoe
from eoe_filter.wire.drops import DropReason
from eoe_filter.wire.eoe import EoeHeader

ARP_REQUEST = bytes.fromhex("ffffffffffff020000000001" "0806" "0001080006040001" "020000000001c0a80001"
                            "000000000000c0a80002")


def test_header_layout_is_22_bytes_big_endian():
    assert eoe.HEADER_LEN == 22
    assert EoeHeader().pack(0x1234) == bytes.fromhex(
        "0600000000f8" "060000000078" "8100" "0ffe" "1234" "80" "0000" "00")


def test_arp_request_is_padded_to_64_and_counted_in_length():
    assert len(ARP_REQUEST) == 42
    frame = eoe.encapsulate(EoeHeader(), ARP_REQUEST)
    assert len(frame) == 86
    assert frame[16:18] == b"\x00\x44"
    assert frame[22:64] == ARP_REQUEST
    assert frame[64:] == bytes(22)


@pytest.mark.parametrize(("field", "value", "offset", "expected"), [
    ("dst", bytes.fromhex("0a0b0c0d0e0f"), 0, "0a0b0c0d0e0f"),
    ("src", bytes.fromhex("112233445566"), 6, "112233445566"),
    ("tpid", 0x88A8, 12, "88a8"),
    ("pcp", 5, 14, "affe"),
    ("dei", 1, 14, "1ffe"),
    ("vid", 100, 14, "0064"),
    ("op_code", 1, 18, "10"),
    ("downstream", 1, 18, "88"),
    ("flag", 5, 18, "85"),
    ("itf", 0xA123, 19, "a123"),
    ("protocol_id", 0x42, 21, "42"),
])
def test_every_field_lands_at_its_offset(field, value, offset, expected):
    frame = eoe.encapsulate(EoeHeader(**{field: value}), bytes(100))
    want = bytes.fromhex(expected)
    assert frame[offset:offset + len(want)] == want
    header, inner = eoe.decode(frame)
    assert getattr(header, field) == value
    assert bytes(inner) == bytes(100)


def test_pon_and_gem_port_share_itf():
    header = EoeHeader(itf=0x3ABC)
    assert (header.pon, header.gem_port) == (3, 0xABC)


def test_largest_inner_frame_fits_and_one_more_is_too_big():
    frame = eoe.encapsulate(EoeHeader(), bytes(eoe.MAX_INNER))
    assert eoe.MAX_INNER == 65531
    assert len(frame) == 65553
    assert frame[16:18] == b"\xff\xff"
    assert eoe.encapsulate(EoeHeader(), bytes(eoe.MAX_INNER + 1)) is DropReason.TOO_BIG


def test_buffer_size_is_the_originals():
    assert eoe.BUFFER_SIZE == 65557


def test_decapsulation_strips_22_bytes_whatever_they_are():
    frame = bytes(range(36))
    assert bytes(eoe.decapsulate(frame)) == frame[22:]
    assert eoe.decapsulate(frame[:35]) is DropReason.RUNT
    assert eoe.decode(b"") is DropReason.RUNT


def test_encapsulate_into_works_in_place_with_headroom():
    buf = bytearray(200)
    buf[30:40] = b"x" * 10
    head = eoe.encapsulate_into(buf, 30, 40, EoeHeader(op_code=1).pack(0))
    assert head == 8
    assert buf[8 + 16:8 + 18] == struct.pack("!H", 68)
    assert buf[8 + 18] == 0x10
    assert buf[30:94] == b"x" * 10 + bytes(54)


def test_header_values_are_checked():
    for bad in ({"vid": 4096}, {"pcp": 8}, {"op_code": 16}, {"flag": 8}, {"dst": b"\x00" * 5}, {"itf": -1}):
        with pytest.raises(ValueError):
            EoeHeader(**bad)


def test_mac_parsing():
    assert eoe.parse_mac("06:00:00:00:00:f8") == bytes.fromhex("0600000000f8")
    assert eoe.format_mac(bytes.fromhex("0600000000f8")) == "06:00:00:00:00:f8"
    for bad in ("06:00:00:00:00", "zz:00:00:00:00:00", "060000000000", "1:2:3:4:5:123"):
        with pytest.raises(ValueError):
            eoe.parse_mac(bad)


def _downstream(inner: bytes, op_code: int = 1) -> bytes:
    return eoe.encapsulate(EoeHeader(op_code=op_code), inner)


def test_filter_rule_accepts_op_code_1_only():
    inner = bytes(12) + b"\x81\x00\x00\x05\x08\x00" + bytes(50)
    assert eoe.accepts_downstream(_downstream(inner))
    assert not eoe.accepts_downstream(_downstream(inner, op_code=8))
    tagged_control = bytes(12) + b"\x81\x00\x00\x05\x08\xab" + bytes(50)
    assert not eoe.accepts_downstream(_downstream(tagged_control))


def test_filter_rule_drops_an_untagged_2219_byte_ipv4_packet_as_the_original():
    ip = b"\x45\x00" + struct.pack("!H", 2219) + bytes(2215)
    inner = bytes(12) + b"\x08\x00" + ip
    assert not eoe.accepts_downstream(_downstream(inner))
    ip = b"\x45\x00" + struct.pack("!H", 2218) + bytes(2214)
    assert eoe.accepts_downstream(_downstream(bytes(12) + b"\x08\x00" + ip))


def test_filter_rule_refuses_frames_too_short_for_offset_38():
    frame = _downstream(bytes(64))[:39]
    assert not eoe.accepts_downstream(frame)


header_fields = st.builds(
    EoeHeader, dst=st.binary(min_size=6, max_size=6), src=st.binary(min_size=6, max_size=6),
    tpid=st.integers(0, 0xFFFF), pcp=st.integers(0, 7), dei=st.integers(0, 1), vid=st.integers(0, 0xFFF),
    op_code=st.integers(0, 15), downstream=st.integers(0, 1), flag=st.integers(0, 7),
    itf=st.integers(0, 0xFFFF), protocol_id=st.integers(0, 0xFF))


@given(header_fields, st.binary(max_size=300))
def test_round_trip(header, inner):
    frame = eoe.encapsulate(header, inner)
    decoded, payload = eoe.decode(frame)
    assert decoded == EoeHeader(**{**_fields(header), "length": max(len(inner), 64) + 4})
    assert bytes(payload[:len(inner)]) == inner
    assert len(frame) == 22 + max(len(inner), 64)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_drop_never_raise(data):
    result = eoe.decode(data)
    assert result is DropReason.RUNT if len(data) < 36 else result[0].pack() == data[:22]
    assert isinstance(eoe.accepts_downstream(data), bool)


def _fields(header: EoeHeader) -> dict:
    return {name: getattr(header, name) for name in header.__slots__}
