"""Hostile input, as properties: every codec round-trips, and any bytes fed to a relay's per-frame
edit, exactly as the datapath feeds them, come out as the spec's frame or as a DropReason.

The example tests (test_wire_eoe.py, test_wire_vlan.py) pin the layout; these look for the frame
nobody thought of: sizes up to the 65557-byte buffer, stale bytes around the frame, a tag the
kernel lifted, hostile header fields. Expected bytes are built from the spec here, not by the codec.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from test_wire_eoe import header_fields

from eoe_filter.config import Options
from eoe_filter.link.packet_socket import RX_HEADROOM
from eoe_filter.relays import RELAYS, Relay
from eoe_filter.wire.drops import DropReason
from eoe_filter.wire.eoe import (
    BUFFER_SIZE,
    HEADER_LEN,
    MAX_INNER,
    MIN_INNER,
    EoeHeader,
    accepts_downstream,
    decapsulate,
    decode,
    encapsulate,
    encapsulate_into,
)
from eoe_filter.wire.vlan import (
    dhcp_to_oam_vid,
    is_dhcp_client_frame,
    oam_to_dhcp_vid,
    restore_tag_into,
    rewrite_vid,
    rewrite_vid_into,
)

TPIDS = (0x8100, 0x88A8)
"""What the receive path lifts into metadata (and so what restore_tag_into puts back)."""
MIN_LIFTED = 16
"""The kernel lifts a tag only from a frame of 20+ wire bytes (tag and EtherType pulled): 16 left."""
EDGE_SIZES = (0, 1, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 35, 36, 37, 39, 40, 41, 63, 64, 65, 1514, 1518,
              MAX_INNER - 4, MAX_INNER - 1, MAX_INNER, MAX_INNER + 1, 0xFFFF, 0xFFFF + 14, 0xFFFF + 18,
              BUFFER_SIZE - 4, BUFFER_SIZE)
SIZES = st.one_of(st.integers(0, 128), st.sampled_from(EDGE_SIZES), st.integers(0, BUFFER_SIZE))
VID = st.integers(0, 0xFFF)
BOARD = bytes.fromhex("060000000078")


@st.composite
def frames(draw: st.DrawFn, min_size: int = 0, max_size: int = BUFFER_SIZE) -> bytes:
    """Any bytes, big ones cheaply: a shrinkable head (sometimes shaped like a tag), then seeded noise."""
    size = min(max(draw(SIZES), min_size), max_size)
    head = draw(st.binary(max_size=min(size, 48)))
    seed = draw(st.integers(0, 2**32 - 1))
    frame = bytearray(head + random.Random(seed).randbytes(size - len(head)))
    tpid = draw(st.sampled_from((None, *TPIDS)))
    if tpid is not None and size >= 16:
        frame[12:16] = struct.pack("!HH", tpid, draw(st.integers(0, 0xFFFF)))
    return bytes(frame)


def junk_buffer(size: int, fill: int) -> bytearray:
    """A reused receive buffer is never clean: edits must not rely on zeros around the frame."""
    return bytearray([fill]) * size


# --- codecs -------------------------------------------------------------------------------------

@given(header_fields, st.integers(0, 0xFFFF))
def test_header_pack_then_unpack_gives_the_fields_back(header, length):
    packed = header.pack(length)
    assert len(packed) == HEADER_LEN
    assert EoeHeader.unpack(packed) == EoeHeader(**{**_fields(header), "length": length})


@given(st.binary(min_size=HEADER_LEN, max_size=HEADER_LEN + 8))
def test_any_22_bytes_unpack_into_a_valid_header_that_packs_to_the_same_bytes(data):
    assert EoeHeader.unpack(data).pack() == data[:HEADER_LEN]


@settings(max_examples=150)
@given(header_fields, frames())
def test_encapsulate_then_decode_at_every_size(header, inner):
    frame = encapsulate(header, inner)
    if len(inner) > MAX_INNER:
        assert frame is DropReason.TOO_BIG
        return
    assert frame == spec_encapsulated(header, inner)
    decoded, payload = decode(frame)
    assert decoded.length == len(frame) - 18
    assert EoeHeader(**{**_fields(decoded), "length": 0}) == header
    assert payload == decapsulate(frame) == frame[HEADER_LEN:]


@settings(max_examples=150)
@given(header_fields, frames(), st.integers(HEADER_LEN, 64), st.integers(0, 255))
def test_encapsulate_into_a_dirty_buffer_equals_encapsulate(header, inner, headroom, fill):
    buf = junk_buffer(headroom + BUFFER_SIZE, fill)
    start, end = headroom, headroom + len(inner)
    buf[start:end] = inner
    before = bytes(buf)
    head = encapsulate_into(buf, start, end, header.pack(0xBEEF))
    assert len(buf) == len(before)
    if len(inner) > MAX_INNER:
        assert head == -1 and buf == before
        return
    tail = max(end, start + MIN_INNER)
    assert head == start - HEADER_LEN
    assert buf[head:tail] == encapsulate(header, inner)
    assert buf[:head] == before[:head] and buf[tail:] == before[tail:]


@given(frames(min_size=12), st.sampled_from(TPIDS) | st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(4, 40), st.integers(0, 255))
def test_restore_tag_into_rebuilds_the_wire_view_and_touches_nothing_else(data, tpid, tci, headroom, fill):
    buf = junk_buffer(headroom + len(data) + 8, fill)
    buf[headroom:headroom + len(data)] = data
    before = bytes(buf)
    head = restore_tag_into(buf, headroom, tpid, tci)
    end = headroom + len(data)
    assert head == headroom - 4 and len(buf) == len(before)
    assert buf[head:end] == data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    assert buf[:head] == before[:head] and buf[end:] == before[end:]


def test_vid_maps_are_inverse_bijections_on_1_to_4093_and_fix_the_rest():
    mapped = range(1, 4094)
    assert sorted(oam_to_dhcp_vid(v) for v in mapped) == list(mapped)
    assert sorted(dhcp_to_oam_vid(v) for v in mapped) == list(mapped)
    for vid in mapped:
        assert dhcp_to_oam_vid(oam_to_dhcp_vid(vid)) == vid == oam_to_dhcp_vid(dhcp_to_oam_vid(vid))
        assert oam_to_dhcp_vid(vid) == spec_oam_to_dhcp(vid) and dhcp_to_oam_vid(vid) == spec_dhcp_to_oam(vid)
    for vid in (0, 4094, 4095):
        assert oam_to_dhcp_vid(vid) == vid == dhcp_to_oam_vid(vid)


@given(frames(max_size=200), st.booleans(), st.integers(0, 64), st.integers(0, 255))
def test_rewrite_vid_into_equals_rewrite_vid_and_is_undone_by_the_other_map(data, downstream, offset, fill):
    there, back = (oam_to_dhcp_vid, dhcp_to_oam_vid) if downstream else (dhcp_to_oam_vid, oam_to_dhcp_vid)
    copy = rewrite_vid(data, there)
    assert copy == spec_vid_rewrite(data, there is oam_to_dhcp_vid)
    assert rewrite_vid(copy, back) == data
    if len(data) < 16:
        return
    buf = junk_buffer(offset + len(data) + 8, fill)
    buf[offset:offset + len(data)] = data
    before = bytes(buf)
    rewrite_vid_into(buf, offset, there)
    assert buf[offset:offset + len(data)] == copy
    assert buf[:offset] == before[:offset] and buf[offset + len(data):] == before[offset + len(data):]


# --- relays: the per-frame path of the datapath ---------------------------------------------------

@st.composite
def relays(draw: st.DrawFn) -> Relay:
    """A relay built from Options as the command line builds it: -F, --accept-*, any EOE header."""
    vids = draw(st.frozensets(VID, max_size=3))
    dmacs = draw(st.frozensets(st.sampled_from((BOARD, b"\xff" * 6)) | st.binary(min_size=6, max_size=6),
                               max_size=2))
    options = Options(network="net0", service="tap0", relay=draw(st.sampled_from(sorted(RELAYS))),
                      filter=draw(st.booleans()), header=draw(header_fields),
                      accept_dmac=dmacs if draw(st.booleans()) else frozenset(),
                      accept_vid=vids if draw(st.booleans()) else frozenset())
    return RELAYS[options.relay](options)


received = st.tuples(frames(), st.none() | st.tuples(st.sampled_from(TPIDS), st.integers(0, 0xFFFF)))
"""One frame as a receive hands it over: its bytes and, maybe, the tag the kernel lifted."""


@settings(max_examples=300, deadline=None)
@given(relays(), st.booleans(), st.lists(received, min_size=1, max_size=4), st.integers(0, 255), st.booleans())
def test_any_frame_through_a_relay_edit_is_the_spec_frame_or_a_drop(relay, net_side, batch, fill, mapped):
    """The datapath's loop: one buffer reused for every frame, the lifted tag restored, then the edit.

    `simple` edits in a bytearray, `fast` in a memoryview of a ring or staging mapping (`mapped`).
    """
    headroom = 0 if net_side else relay.service_headroom
    at = headroom + RX_HEADROOM
    buf = junk_buffer(at + BUFFER_SIZE, fill)
    if mapped:
        buf = memoryview(buf)
    size = len(buf)
    edit = relay.net_to_service if net_side else relay.service_to_net
    lifts = net_side or relay.name == "dhcp"  # the EOE relay's service side is a TAP: nothing lifted
    for data, tag in batch:
        if not lifts or len(data) < MIN_LIFTED:
            tag = None
        wire = data if tag is None else data[:12] + struct.pack("!HH", *tag) + data[12:]
        if net_side and relay.options.filter and not KERNEL_FILTER[relay.name](wire):
            continue  # refused by the -F program in the kernel: the relay never sees it
        expected = spec_edit(relay, net_side, wire)
        buf[at:at + len(data)] = data
        start = at if tag is None else restore_tag_into(buf, at, *tag)
        result = edit(buf, start, at + len(data))
        assert len(buf) == size, "an edit must not resize the datapath's buffer"
        if isinstance(expected, DropReason):
            assert result is expected
            continue
        assert not isinstance(result, DropReason), result
        begin, end = result
        assert 0 <= begin <= end <= size
        assert buf[begin:end] == expected


KERNEL_FILTER = {"eoe": accepts_downstream, "dhcp": is_dhcp_client_frame}
"""The pure twins of the -F programs (test_bpf_classic.py holds them equal)."""


def spec_edit(relay: Relay, net_side: bool, wire: bytes) -> bytes | DropReason:
    """What the spec says a relay makes of a wire-view frame that got past -F (sections 1, 2, --accept-*)."""
    options = relay.options
    if net_side and not _spec_accept(options, wire):
        return DropReason.FILTERED
    if relay.name == "dhcp":
        return spec_vid_rewrite(wire, net_side)
    if net_side:
        return DropReason.RUNT if len(wire) < HEADER_LEN + 14 else wire[HEADER_LEN:]
    return DropReason.TOO_BIG if len(wire) > MAX_INNER else spec_encapsulated(options.header, wire)


def _spec_accept(options: Options, wire: bytes) -> bool:
    """--accept-dmac / --accept-vid: destination MAC and outer 802.1Q VID in the sets, when given."""
    if not (options.accept_dmac or options.accept_vid):
        return True
    if len(wire) < 16:
        return False
    if options.accept_dmac and wire[:6] not in options.accept_dmac:
        return False
    if options.accept_vid:
        return wire[12:14] == b"\x81\x00" and int.from_bytes(wire[14:16], "big") & 0xFFF in options.accept_vid
    return True


def spec_encapsulated(header: EoeHeader, inner: bytes) -> bytes:
    """Spec section 1: the 22 header bytes field by field, then the inner frame zero-padded to 64."""
    padded = inner + bytes(max(0, 64 - len(inner)))
    return (header.dst + header.src + header.tpid.to_bytes(2, "big")
            + (header.pcp << 13 | header.dei << 12 | header.vid).to_bytes(2, "big")
            + (4 + len(padded)).to_bytes(2, "big")
            + bytes([header.op_code << 4 | header.downstream << 3 | header.flag])
            + header.itf.to_bytes(2, "big") + bytes([header.protocol_id]) + padded)


def spec_oam_to_dhcp(vid: int) -> int:
    return vid if vid in (0, 4094, 4095) else (vid - 2) % 4093 + 1


def spec_dhcp_to_oam(vid: int) -> int:
    return vid if vid in (0, 4094, 4095) else vid % 4093 + 1


def spec_vid_rewrite(wire: bytes, net_to_service: bool) -> bytes:
    """Spec section 2: a 0x8100 tag's VID mapped, PCP and DEI kept; anything else unchanged."""
    if len(wire) < 16 or wire[12:14] != b"\x81\x00":
        return wire
    tci = int.from_bytes(wire[14:16], "big")
    vid = (spec_oam_to_dhcp if net_to_service else spec_dhcp_to_oam)(tci & 0xFFF)
    return wire[:14] + (tci & 0xF000 | vid).to_bytes(2, "big") + wire[16:]


def _fields(header: EoeHeader) -> dict[str, object]:
    return {name: getattr(header, name) for name in header.__slots__}
