"""The benchmark's building blocks on real veth pairs and TAPs: the traffic
generator and sink (eoe_filter.bench.traffic) and the C baseline
(eoe_filter.bench.c_original.c), each in namespaces this module makes and
always removes."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from eoe_filter.bench.cbuild import build_c_original
from eoe_filter.bench.lab_measure import (
    LAB_PREFIX,
    inner_frame,
    stop_c_original,
    wait_ready,
)
from eoe_filter.bench.traffic import (
    Generator,
    InNetns,
    Sink,
    open_packet_socket,
)
from eoe_filter.lab import Lab, in_netns
from eoe_filter.link.packet_socket import wire_view

pytestmark = pytest.mark.system

NET, PEER, TAP = "net0", "peer0", "tapc"
CPUS = sorted(os.sched_getaffinity(0))
BOARD, SWITCH = "06:00:00:00:00:78", "06:00:00:00:00:f8"


@pytest.fixture
def bench_lab() -> Iterator[tuple[Lab, str, str]]:
    """Namespaces dut (net0) and peer (peer0) joined by a veth pair."""
    lab = Lab(LAB_PREFIX)
    try:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET, peer, PEER)
        yield lab, dut, peer
    finally:
        lab.close()


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c_original built here; a missing compiler FAILS, CI installs gcc."""
    built = build_c_original(tmp_path_factory.mktemp("cbuild"))
    if built.binary is None:
        pytest.fail(built.reason)
    assert built.warnings == "", built.warnings
    return built.binary


def _socket(ns: str, ifname: str, *, receive: bool) -> socket.socket:
    """A packet socket on ifname inside ns, receiving with PACKET_AUXDATA or send-only."""
    with in_netns(ns):
        return open_packet_socket(ifname, receive=receive)


def _collect(sock: socket.socket, quiet: float = 0.5) -> list[bytes]:
    """Wire views of every frame arriving until `quiet` seconds pass without one."""
    sock.settimeout(quiet)
    frames = []
    while True:
        try:
            frames.append(wire_view(sock))
        except TimeoutError:
            return frames


def _eoe(inner: bytes, ctrl: int = 0x18, tag: type = Dot1Q, vid: int = 4094) -> bytes:
    """An EOE frame from the switch: any inner bytes, no padding, as scapy builds it."""
    return bytes(Ether(dst=BOARD, src=SWITCH) / tag(vlan=vid, type=len(inner) + 4) / Raw(bytes([ctrl, 0, 0, 0]) + inner))


def _run_pair(gen_at: tuple, sink_at: tuple, gen_kwargs: dict, sink_kwargs: dict) -> tuple:
    """Run a generator and a sink in their own processes, sink first."""
    with InNetns(*sink_at, cpu=CPUS[-1]) as sink, InNetns(*gen_at, cpu=CPUS[0]) as gen:
        sink.start(**sink_kwargs)
        gen.start(**gen_kwargs)
        return gen.result(60), sink.result(60)


# --- traffic generator and sink -----------------------------------------------
def test_generator_outruns_kernel_path(bench_lab: tuple[Lab, str, str]) -> None:
    _, dut, peer = bench_lab
    frame = inner_frame(64)
    offered, got = _run_pair(
        (dut, functools.partial(Generator, NET, frame, seq_offset=14)),
        (peer, functools.partial(Sink, PEER, seq_offset=14)),
        {"duration": 1.0},
        {"idle": 1.0, "duration": 20},
    )
    user_share = offered.cpu_user / (offered.cpu_user + offered.cpu_sys)
    print(f"\ngenerator {offered.rate:,.0f} frames/s (user share {user_share:.1%}),"
          f" sink {got.rate:,.0f} frames/s, socket drops {got.socket_drops}")
    assert offered.frames > 20_000
    # Python costs little next to the kernel: the kernel sets the pace.
    assert user_share < 0.35
    # Every frame the kernel accepted reached the sink or its drop counter.
    assert got.frames + got.socket_drops == offered.frames
    assert got.bytes == got.frames * len(frame)
    assert got.late == 0


def test_sink_counts_exactly_at_modest_rate(bench_lab: tuple[Lab, str, str]) -> None:
    _, dut, peer = bench_lab
    frame = inner_frame(64)
    offered, got = _run_pair(
        (dut, functools.partial(Generator, NET, frame, seq_offset=14, ts_offset=22, batch=64)),
        (peer, functools.partial(Sink, PEER, seq_offset=14, ts_offset=22)),
        {"count": 10_000, "rate": 50_000},
        {"count": 10_000, "duration": 20},
    )
    assert (offered.frames, offered.refused) == (10_000, 0)
    assert offered.rate < 55_000  # never above the target (below it only on a busy machine)
    assert (got.frames, got.bytes, got.socket_drops) == (10_000, 10_000 * len(frame), 0)
    assert (got.first_seq, got.last_seq, got.late, got.missing) == (0, 9_999, 0, 0)
    assert got.latency is not None and got.latency.samples == 10_000
    assert 0 < got.latency.min <= got.latency.p50 < 1_000_000_000


def test_sink_offsets_are_the_received_view(bench_lab: tuple[Lab, str, str]) -> None:
    """A tagged frame reaches a packet socket without its tag: offsets shift by 4."""
    _, dut, peer = bench_lab
    frame = bytes(Ether(dst=BOARD, src=SWITCH) / Dot1Q(vlan=7, type=0x88B5) / Raw(bytes(50)))
    offered, got = _run_pair(
        (dut, functools.partial(Generator, NET, frame, seq_offset=18, first_seq=1000)),
        (peer, functools.partial(Sink, PEER, seq_offset=14)),
        {"count": 100},
        {"count": 100, "duration": 20},
    )
    assert offered.frames == got.frames == 100
    assert got.bytes == 100 * (len(frame) - 4)
    assert (got.first_seq, got.last_seq, got.late, got.missing) == (1000, 1099, 0, 0)


# --- the C baseline -----------------------------------------------------------
def test_c_original_compiles_without_warnings(c_binary: Path) -> None:
    assert c_binary.is_file()


def _start_c(lab: Lab, ns: str, binary: Path, *flags: str) -> subprocess.Popen[Any]:
    proc = lab.start(ns, [str(binary), "-n", NET, "-t", TAP, *flags], stdout=subprocess.PIPE, text=True)
    wait_ready(proc)
    return proc


def _link(lab: Lab, ns: str, ifname: str) -> dict[str, Any]:
    out = lab.run(ns, ["ip", "-d", "-j", "link", "show", ifname])
    assert out.returncode == 0, out.stderr
    link: dict[str, Any] = json.loads(out.stdout)[0]
    return link


def test_c_original_relays_both_ways(bench_lab: tuple[Lab, str, str], c_binary: Path) -> None:
    lab, dut, peer = bench_lab
    proc = _start_c(lab, dut, c_binary)
    tap = _link(lab, dut, TAP)
    assert "UP" in tap["flags"] and tap["mtu"] == 1500 - 18
    assert _link(lab, dut, NET)["promiscuity"] == 1  # a socket membership, gone with the socket

    peer_tx, peer_rx = _socket(peer, PEER, receive=False), _socket(peer, PEER, receive=True)
    tap_tx, tap_rx = _socket(dut, TAP, receive=False), _socket(dut, TAP, receive=True)
    try:
        # net -> TAP: the 22-byte header goes, whatever it says; the outer tag
        # the kernel lifted is put back first (else 4 inner bytes would be cut).
        plain = inner_frame(64)
        tagged_inner = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=5, type=0x0800)
                             / Raw(bytes(range(60))))
        cases = [
            (_eoe(plain), plain),
            (_eoe(tagged_inner), tagged_inner),
            (_eoe(plain, ctrl=0x80, tag=Dot1AD, vid=12), plain),
            (_eoe(plain)[:35], None),  # shorter than 36 wire bytes: dropped
            (_eoe(plain)[:36], plain[:14]),
            # untagged on the wire (no 0x8100 at 12): nothing lifted, still 22 bytes off
            (bytes(12) + b"\x88\xb5" + bytes(8) + plain, plain),
        ]
        for wire, _ in cases:
            peer_tx.send(wire)
        assert _collect(tap_rx) == [inner for _, inner in cases if inner is not None]

        # TAP -> net: padded to 64 bytes behind the default header, tag on the wire.
        arp_like = inner_frame(42)
        full = inner_frame(1500 - 18 + 14)
        for inner in (arp_like, full):
            tap_tx.send(inner)
        header = bytes.fromhex("0600000000f8" "060000000078" "8100" "0ffe")
        assert _collect(peer_rx) == [
            header + b"\x00\x44" + b"\x80\x00\x00\x00" + arp_like + bytes(22),
            header + (4 + len(full)).to_bytes(2, "big") + b"\x80\x00\x00\x00" + full,
        ]
    finally:
        for sock in (peer_tx, peer_rx, tap_tx, tap_rx):
            sock.close()

    counters = stop_c_original(proc)
    assert _link(lab, dut, NET)["promiscuity"] == 0
    # rx == 6: its own 2 outgoing frames on net0 were not looped back in.
    assert counters["net_to_tap"] == {"rx": 6, "fwd": 5, "dropped": 1, "write_err": 0, "read_err": 0}
    assert counters["tap_to_net"] == {"rx": 2, "fwd": 2, "dropped": 0, "write_err": 0, "read_err": 0}


def test_c_original_filter(bench_lab: tuple[Lab, str, str], c_binary: Path) -> None:
    """-F: op_code 1 and not 0x08ab at wire offset 38, whether or not the
    kernel lifted the outer tag (the filter sees the socket's view)."""
    lab, dut, peer = bench_lab
    proc = _start_c(lab, dut, c_binary, "-F")
    peer_tx, tap_rx = _socket(peer, PEER, receive=False), _socket(dut, TAP, receive=True)

    def inner(ethertype: int) -> bytes:
        return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=5, type=ethertype)
                     / Raw(bytes(46)))

    untagged_down = bytes.fromhex(BOARD.replace(":", "") + SWITCH.replace(":", "")) + b"\x88\xb5" + bytes(4) + b"\x10\x00\x00\x00"
    cases = [
        (_eoe(inner(0x0800)), True),
        (_eoe(inner(0x08AB)), False),
        (_eoe(inner(0x0800), ctrl=0x80), False),
        (_eoe(inner(0x0800), ctrl=0x1F), True),
        (untagged_down + inner(0x0800), True),
        (untagged_down + inner(0x08AB), False),
    ]
    try:
        for wire, _ in cases:
            peer_tx.send(wire)
        assert _collect(tap_rx) == [wire[22:] for wire, accepted in cases if accepted]
    finally:
        peer_tx.close()
        tap_rx.close()
    assert stop_c_original(proc)["net_to_tap"]["fwd"] == 3
