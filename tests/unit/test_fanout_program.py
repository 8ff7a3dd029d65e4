"""The `--workers` fanout program, run in the kernel-faithful interpreter on the view a fanout program gets.

`worker_of` states the program's contract on the WIRE view, independently
of its instructions: which worker an EOE frame's inner flow goes to. The
properties: the program agrees with it on any bytes, never names a worker
outside 0..N-1, keeps every frame of a flow (and every fragment of a
datagram) on one worker, and spreads distinct flows over all workers.
"""

from __future__ import annotations

import struct

import pytest
from cbpf_vm import fanout_view, run
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from eoe_filter.ebpf.asm import EXIT, JMP
from eoe_filter.ebpf.classic import translate
from eoe_filter.link.bpf_classic import (
    FLOW_MIX,
    FOLD_SHIFT,
    eoe_fanout_program,
    tap_steering_program,
)
from eoe_filter.wire.eoe import EoeHeader

WORKERS = st.integers(1, 8)
PROGRAMS = {n: eoe_fanout_program(n) for n in range(1, 9)}
STEERING = {n: tap_steering_program(n) for n in range(1, 9)}
_U32 = 0xFFFFFFFF


class _Short(Exception):
    pass


def worker_of(wire: bytes, workers: int) -> int:
    """The contract, on the wire view: the inner frame starts at byte 22, whatever the outer header says."""
    inner = wire[22:]

    def be(offset: int, size: int) -> int:
        if offset + size > len(inner):
            raise _Short
        return int.from_bytes(inner[offset:offset + size], "big")

    try:
        base = 4 if be(12, 2) == 0x8100 else 0
        ethertype, l3 = be(base + 12, 2), base + 14
        if ethertype == 0x0800:
            words = []
            if be(l3 + 9, 1) in (6, 17) and not be(l3 + 6, 2) & 0x3FFF:
                words.append(be(l3 + 4 * (be(l3, 1) & 0x0F), 4))
            words += [be(l3 + 12, 4), be(l3 + 16, 4)]
        elif ethertype == 0x86DD:
            words = [be(l3 + 8 + 4 * i, 4) for i in range(8)]
        else:
            words = [be(base + offset, 4) for offset in (0, 4, 8)]
    except _Short:
        return 0
    h = 0
    for word in words:
        h = ((h ^ word) * FLOW_MIX) & _U32
    return (h ^ h >> FOLD_SHIFT) % workers


def eoe(inner: bytes) -> bytes:
    """An EOE frame as the switch sends it, tag inline on the wire."""
    return EoeHeader(op_code=1, downstream=1).pack(4 + len(inner)) + inner


def program_says(wire: bytes, workers: int) -> int:
    view = fanout_view(wire)
    assert view is not None
    return run(PROGRAMS[workers], *view)


ADDRESSES = st.integers(0, _U32).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))
PORTS = st.integers(0, 0xFFFF)


@st.composite
def inner_frames(draw: st.DrawFn) -> bytes:
    """Inner frames of every kind the program tells apart, some cut short."""
    kind = draw(st.sampled_from(["tcp", "udp", "fragment", "icmp", "ipv6", "arp", "bytes"]))
    mac = Ether(dst="02:00:00:00:00:02", src=draw(st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:03"])))
    l2 = mac / Dot1Q(vlan=draw(st.integers(1, 4094))) if draw(st.booleans()) else mac
    payload = Raw(draw(st.binary(max_size=40)))
    if kind == "bytes":
        frame = draw(st.binary(max_size=120))
    elif kind == "ipv6":
        frame = bytes(l2 / IPv6(src=f"2001:db8::{draw(PORTS):x}", dst="2001:db8::1") / payload)
    elif kind == "arp":
        frame = bytes(l2)[:-2] + b"\x08\x06" + draw(st.binary(min_size=28, max_size=28))
    else:
        ip = IP(src=draw(ADDRESSES), dst=draw(ADDRESSES), ihl=draw(st.sampled_from([None, 6])),
                flags=draw(st.sampled_from([0, 1, 2])) if kind == "fragment" else 0,
                frag=draw(st.integers(0, 0x1FFF)) if kind == "fragment" else 0)
        l4 = {"tcp": TCP(sport=draw(PORTS), dport=draw(PORTS)), "udp": UDP(sport=draw(PORTS), dport=draw(PORTS)),
              "fragment": UDP(sport=draw(PORTS), dport=draw(PORTS)), "icmp": Raw(b"\x08\x00")}[kind]
        frame = bytes(l2 / ip / l4 / payload)
    return frame[:draw(st.integers(0, len(frame)))] if draw(st.integers(0, 9)) == 0 else frame


@settings(max_examples=600, deadline=None)
@given(inner_frames(), WORKERS)
def test_the_program_follows_the_contract_and_names_a_worker_below_n(inner: bytes, workers: int):
    said = program_says(eoe(inner), workers)
    assert said == worker_of(eoe(inner), workers)
    assert 0 <= said < workers


@settings(max_examples=400, deadline=None)
@given(inner_frames(), WORKERS)
def test_the_tap_steering_program_hashes_the_same_flow(inner: bytes, workers: int):
    """What the host sends into the TAP is the inner frame itself, from its first byte."""
    said = run(STEERING[workers], inner)
    assert said == worker_of(bytes(22) + inner, workers)
    assert 0 <= said < workers


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=200), WORKERS)
def test_any_bytes_name_a_worker_below_n(wire: bytes, workers: int):
    """Garbage the relay decapsulates as it is: the untagged (inline) view of the program too."""
    view = fanout_view(wire)
    if view is not None:
        said = run(PROGRAMS[workers], *view)
        assert said == worker_of(wire, workers)
        assert 0 <= said < workers


@settings(max_examples=300, deadline=None)
@given(ADDRESSES, ADDRESSES, PORTS, PORTS, st.sampled_from([TCP, UDP]), WORKERS,
       st.lists(st.tuples(st.binary(max_size=200), st.integers(1, 255), st.integers(0, 0xFFFF)),
                min_size=2, max_size=5))
def test_every_frame_of_a_flow_goes_to_one_worker(src: str, dst: str, sport: int, dport: int, l4: type,
                                                  workers: int, frames: list[tuple[bytes, int, int]]):
    """Payload, TTL and IP id vary along a flow; the 5-tuple does not."""
    mac = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    said = {program_says(eoe(bytes(mac / IP(src=src, dst=dst, ttl=ttl, id=ident) / l4(sport=sport, dport=dport)
                                   / Raw(data))), workers)
            for data, ttl, ident in frames}
    assert len(said) == 1


@settings(max_examples=200, deadline=None)
@given(ADDRESSES, ADDRESSES, PORTS, PORTS, WORKERS, st.integers(1, 6))
def test_every_fragment_of_a_datagram_goes_to_one_worker(src: str, dst: str, sport: int, dport: int,
                                                         workers: int, pieces: int):
    """Only the first fragment has ports, so a fragment is hashed on its addresses alone."""
    mac = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    datagram = IP(src=src, dst=dst, id=7) / UDP(sport=sport, dport=dport) / Raw(bytes(8 * 8 * pieces))
    body = bytes(datagram)[20:]
    size = len(body) // pieces // 8 * 8
    fragments = [IP(src=src, dst=dst, id=7, proto=17, flags=1 if k < pieces - 1 else 0, frag=k * size // 8)
                 / Raw(body[k * size:(k + 1) * size if k < pieces - 1 else None]) for k in range(pieces)]
    said = {program_says(eoe(bytes(mac / f)), workers) for f in fragments}
    assert len(said) == 1


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_distinct_flows_spread_over_every_worker(workers: int):
    mac = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    counts = [0] * workers
    for port in range(40000, 40400):
        counts[program_says(eoe(bytes(mac / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=port, dport=5000))),
                            workers)] += 1
    assert min(counts) > 400 / workers / 2, counts  # every worker near its share


def test_the_inner_flow_decides_not_the_outer_header():
    """The outer header is the same for every EOE frame: a hash of it would pick one worker for all."""
    inner = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    other = struct.pack("!6s6sHHH", bytes(6), bytes(6), 0x8100, 0x0123, len(inner) + 4) + bytes(4) + inner
    assert program_says(other, 4) == program_says(eoe(inner), 4)


def test_n_must_be_a_number_of_members():
    with pytest.raises(ValueError, match="fanout members"):
        eoe_fanout_program(0)
    with pytest.raises(ValueError, match="TAP queues"):
        tap_steering_program(0)


def test_the_steering_program_translates_to_ebpf_and_ancillary_loads_do_not():
    """TUNSETSTEERINGEBPF takes eBPF: every classic return becomes an exit; the kernel runs the result in
    tests/system/test_fast_workers.py, whose per-worker counts it must predict."""
    program = tap_steering_program(4)
    translated = translate(program)
    returns = sum(insn.code & 0x07 == 0x06 for insn in program)
    assert sum(insn.code == (JMP | EXIT) for insn in translated) == returns
    with pytest.raises(ValueError, match="outside what translate"):
        translate(eoe_fanout_program(4))  # SKF_AD_VLAN_TAG_PRESENT has no legacy eBPF load
