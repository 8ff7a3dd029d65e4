"""Coverage-guided fuzzing (atheris, libFuzzer) of what the datapath does to every frame, per relay.

One input is a frame plus the circumstances it can meet: the relay and its options (-F, the EOE
header, --accept-*), the direction, a tag the kernel lifted into metadata, the stale bytes of the
reused receive buffer (a bytearray in `simple`, a memoryview of a mapping in `fast`), and a size
to grow the frame to (so that 65557-byte frames cost no 64 KiB inputs). It then runs what the
datapath runs: the -F program with the kernel's semantics (on the socket's view, the tag beside
it), restore_tag_into, the relay's edit. The spec's invariants are asserts: a failing one, or any
other exception, is a crash.

    python tests/fuzz/fuzz_relays.py CORPUS_DIR -max_total_time=60    # any libFuzzer flags
    python tests/fuzz/fuzz_relays.py crash-FILE                       # replay one input
    python tests/fuzz/fuzz_relays.py --write-seeds DIR                # valid frames of each kind

Input layout, consumed from the front: relay (1 byte), eight booleans (1 byte each: -F, net side,
tag lifted, the lifted TPID is 0x88a8, grow, --accept-vid, --accept-dmac, mapped buffer), TCI (2, LE),
buffer fill (1), grown size (3, LE), accepted VID (2, LE), accepted MAC (6), EOE header (22), frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))  # cbpf_vm: the kernel's cBPF

with atheris.instrument_imports(include=["eoe_filter", "cbpf_vm"]):
    import cbpf_vm

    from eoe_filter.config import RELAY_NAMES, Options
    from eoe_filter.link.packet_socket import RX_HEADROOM
    from eoe_filter.relays import RELAYS
    from eoe_filter.wire.drops import DropReason
    from eoe_filter.wire.eoe import BUFFER_SIZE, HEADER_LEN, MAX_INNER, MIN_FRAME, EoeHeader, accepts_downstream
    from eoe_filter.wire.vlan import TPID_8021AD, TPID_8021Q, is_dhcp_client_frame, restore_tag_into

MIN_LIFTED = 16
"""The kernel lifts a tag only from a frame of 20+ wire bytes; shorter tagged ones never reach a socket."""
FILL = bytes(range(256)) * (BUFFER_SIZE // 256 + 1)
"""What a frame is grown with: not zeros, so that an edit reading the wrong bytes shows."""
PREDICATES = {"eoe": accepts_downstream, "dhcp": is_dhcp_client_frame}
"""The pure rules the -F programs implement; the verdicts must agree."""
PROGRAMS = {name: RELAYS[name](Options(network="n", service="s", relay=name)).classic_filter()
            for name in RELAY_NAMES}


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name = RELAY_NAMES[fdp.ConsumeUInt(1) % len(RELAY_NAMES)]
    filtered, net_side, lifted, s_tag, grow, vid_rule, dmac_rule, mapped = (fdp.ConsumeBool() for _ in range(8))
    tci, fill, size = fdp.ConsumeUInt(2), fdp.ConsumeUInt(1), fdp.ConsumeUInt(3) % (BUFFER_SIZE + 1)
    vid, dmac, header = fdp.ConsumeUInt(2) & 0xFFF, fdp.ConsumeBytes(6), fdp.ConsumeBytes(HEADER_LEN)
    frame = fdp.ConsumeBytes(fdp.remaining_bytes())
    if grow:
        frame = (frame + FILL)[:size]
    frame = frame[:BUFFER_SIZE]  # a larger one is a TRUNCATED drop in the receive, never edited
    options = Options(network="net0", service="tap0", relay=name, filter=filtered,
                      header=EoeHeader.unpack(header) if len(header) == HEADER_LEN else EoeHeader(),
                      accept_vid=frozenset({vid}) if vid_rule else frozenset(),
                      accept_dmac=frozenset({dmac}) if dmac_rule and len(dmac) == 6 else frozenset())
    relay = RELAYS[name](options)
    tpid = TPID_8021AD if s_tag else TPID_8021Q
    if not (lifted and len(frame) >= MIN_LIFTED and (net_side or name == "dhcp")):  # a TAP lifts nothing
        lifted = False
    wire = frame[:12] + (tpid << 16 | tci).to_bytes(4, "big") + frame[12:] if lifted else frame
    where = f"{name}{' -F' if filtered else ''} {'net->service' if net_side else 'service->net'}, " \
            f"{len(frame)} bytes{f', lifted tag {tpid:#06x}/{tci:#06x}' if lifted else ''}"

    if net_side and filtered:
        verdict = cbpf_vm.run(PROGRAMS[name], frame, tci if lifted else None, tpid if lifted else 0)
        assert (verdict != 0) == PREDICATES[name](wire), f"{where}: -F program and rule disagree"
        assert verdict == 0 or verdict >= len(frame), f"{where}: -F would truncate to {verdict} bytes"
        if not verdict:
            return

    at = (0 if net_side else relay.service_headroom) + RX_HEADROOM
    buf = bytearray([fill]) * (at + BUFFER_SIZE)
    if mapped:
        buf = memoryview(buf)  # type: ignore[assignment]  # as `fast` edits its ring slots
    size = len(buf)
    buf[at:at + len(frame)] = frame
    start = restore_tag_into(buf, at, tpid, tci) if lifted else at
    assert buf[start:at + len(frame)] == wire, f"{where}: restored frame is not the wire view"
    result = (relay.net_to_service if net_side else relay.service_to_net)(buf, start, at + len(frame))
    assert len(buf) == size, f"{where}: the edit resized the buffer"
    expected = spec(options, net_side, wire)
    if isinstance(expected, DropReason) or isinstance(result, DropReason):
        assert result is expected, f"{where}: {result!r}, the spec says {expected!r}"
        return
    begin, end = result
    assert 0 <= begin <= end <= size, f"{where}: span {begin}..{end} outside the {size}-byte buffer"
    assert buf[begin:end] == expected, f"{where}: {end - begin} bytes out, not the spec's {len(expected)}"


def spec(options: Options, net_side: bool, wire: bytes) -> bytes | DropReason:
    """The spec's answer for a wire-view frame past -F: sections 1 and 2, and --accept-*."""
    if net_side and not _accepted(options, wire):
        return DropReason.FILTERED
    if options.relay == "dhcp":
        tci = int.from_bytes(wire[14:16], "big") if len(wire) >= 16 and wire[12:14] == b"\x81\x00" else None
        if tci is None or tci & 0xFFF in (0, 4094, 4095):
            return wire
        vid = (tci & 0xFFF) - 1 if net_side else (tci & 0xFFF) + 1  # OAM n <-> DHCP n - 1, wrapping in 1..4093
        return wire[:14] + (tci & 0xF000 | (vid - 1) % 4093 + 1).to_bytes(2, "big") + wire[16:]
    if net_side:
        return DropReason.RUNT if len(wire) < MIN_FRAME else wire[HEADER_LEN:]
    if len(wire) > MAX_INNER:
        return DropReason.TOO_BIG
    h, padded = options.header, wire + bytes(max(0, 64 - len(wire)))
    return (h.dst + h.src + (h.tpid << 16 | h.pcp << 13 | h.dei << 12 | h.vid).to_bytes(4, "big")
            + (4 + len(padded)).to_bytes(2, "big") + bytes([h.op_code << 4 | h.downstream << 3 | h.flag])
            + h.itf.to_bytes(2, "big") + bytes([h.protocol_id]) + padded)


def _accepted(options: Options, wire: bytes) -> bool:
    """--accept-dmac / --accept-vid: destination MAC and outer 802.1Q VID in their sets, when given."""
    if not (options.accept_vid or options.accept_dmac):
        return True
    if len(wire) < 16 or options.accept_dmac and wire[:6] not in options.accept_dmac:
        return False
    return not options.accept_vid or (wire[12:14] == b"\x81\x00"
                                      and int.from_bytes(wire[14:16], "big") & 0xFFF in options.accept_vid)


def encode(relay: str, frame: bytes, *, filtered: bool = False, net_side: bool = True,
           tag: tuple[int, int] | None = None, grow: int | None = None, header: EoeHeader | None = None) -> bytes:
    """An input in the layout above (no --accept-*): for seed corpora."""
    tpid, tci = tag or (TPID_8021Q, 0)
    flags = (filtered, net_side, tag is not None, tpid == TPID_8021AD, grow is not None, False, False, False)
    return (bytes([RELAY_NAMES.index(relay), *flags]) + tci.to_bytes(2, "little") + bytes(1)
            + (grow or 0).to_bytes(3, "little") + bytes(2 + 6) + (header or EoeHeader()).pack() + frame)


def seeds() -> dict[str, bytes]:
    """A few valid frames of each kind, as each socket hands them over (EOE tags lifted)."""
    ether = bytes.fromhex("020000000002020000000001")
    inner = ether + b"\x08\x00" + bytes(range(46))
    tagged_inner = ether + b"\x81\x00\x00\x07\x08\x00" + bytes(range(60))
    ip_udp = (b"\x08\x00" + bytes.fromhex("45000030000000004011") + bytes(10)
              + (67).to_bytes(2, "big") + (68).to_bytes(2, "big") + bytes(4) + bytes(28))
    down = EoeHeader(op_code=1, downstream=1)
    eoe_down = down.pack(len(tagged_inner) + 4)
    untagged_eoe = eoe_down[:12] + eoe_down[16:]  # as a socket reads it: the 0x8100 tag lifted
    eoe_tag = (TPID_8021Q, down.tci)
    return {
        "eoe-decap": encode("eoe", untagged_eoe + inner, tag=eoe_tag),
        "eoe-decap-F": encode("eoe", untagged_eoe + tagged_inner, filtered=True, tag=eoe_tag),
        "eoe-runt": encode("eoe", untagged_eoe[:20], tag=eoe_tag),
        "eoe-encap-arp": encode("eoe", inner[:42], net_side=False),
        "eoe-encap-1500": encode("eoe", inner + bytes(1500 - len(inner)), net_side=False),
        "eoe-encap-largest": encode("eoe", inner, net_side=False, grow=MAX_INNER),
        "eoe-decap-largest": encode("eoe", untagged_eoe + inner, tag=eoe_tag, grow=0xFFFF + 14),
        "dhcp-down": encode("dhcp", ether + ip_udp, tag=(TPID_8021Q, 0xA064)),
        "dhcp-down-F": encode("dhcp", ether + ip_udp, filtered=True, tag=(TPID_8021Q, 1)),
        "dhcp-up": encode("dhcp", ether + ip_udp, net_side=False, tag=(TPID_8021Q, 4093)),
        "dhcp-s-tag": encode("dhcp", ether + b"\x81\x00\x00\x64" + ip_udp, tag=(TPID_8021AD, 5)),
        "dhcp-untagged": encode("dhcp", ether + ip_udp),
    }


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (out / name).write_bytes(data)
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
