"""A hostile wire against a live forwarder on a real veth with the largest MTU.

The network side gets runts, frames of up to 65553 bytes, lying length fields, op codes and inner
protocols -F must refuse, truncated inner headers and seeded noise, with valid EOE frames carrying
unique markers in between; the TAP side gets random inner frames of up to 65549 bytes. The
forwarder must stay alive, pass every valid frame byte-exact and in order, pass nothing else, and
account for every frame it was handed.

What a frame becomes is predicted from the spec and the kernel's rules, not from the forwarder's
code: the kernel refuses to send what is shorter than an Ethernet header or longer than the MTU
allows, and frees a tagged frame too short to untag before any socket sees it.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import sys
import threading
import time

import pytest

from eoe_filter.ebpf.programs import STRIP_MAX_INNER
from eoe_filter.link import abi
from eoe_filter.link.abi import ABI
from eoe_filter.link.packet_socket import wire_view

from .conftest import UNDER_EBPF, EoeLab, Forwarder
from .frames import BOARD_MAC, SWITCH_MAC, eoe_frame, inner_frame

MTU = 65535
UNTAGGED_MAX = MTU + 14
TAGGED_MAX = MTU + 18  # 65553: the largest frame a raw socket sends, tag included
TAP_MTU = 65521  # the tun driver's largest (65535 - 14): untagged inner frames of up to 65535 bytes
MAX_INNER = 65531  # the largest inner frame whose EOE length field (4 + inner) fits 16 bits
MIN_EOE = 36  # header + an inner Ethernet header
LONGEST_FORWARDED = STRIP_MAX_INNER if UNDER_EBPF else MAX_INNER
"""The eBPF datapath counts longer inner frames as too big (tc cannot trim them); userspace forwards all."""
MAGIC = b"EOE-MARK"
BATCH_FRAMES = 16
BATCH_BYTES = 512 << 10
"""A batch stays far below the forwarder's 4 MiB socket queue: content is exact, not merely counted."""


class Capture(threading.Thread):
    """Every frame arriving on one interface, read as it comes so that our own queue never overflows."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUFFORCE, 256 << 20)
        sock.settimeout(0.05)
        self.frames: list[bytes] = []
        self.markers: set[int] = set()
        self.changed = threading.Condition()
        self.running = True
        self.start()

    def run(self) -> None:
        while self.running:
            try:
                frame = wire_view(self.sock, 1 << 17)
            except TimeoutError:
                continue
            except OSError:
                if self.sock.fileno() < 0:  # closed by the fixture after a failure
                    return
                raise
            at = frame.find(MAGIC)
            with self.changed:
                self.frames.append(frame)
                if at >= 0:
                    self.markers.add(int.from_bytes(frame[at + len(MAGIC):at + len(MAGIC) + 4], "big"))
                self.changed.notify_all()

    def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: seq in self.markers, timeout)

    def stop(self, quiet: float = 0.3) -> list[bytes]:
        """All frames, once nothing more has come for `quiet` seconds; our own socket dropped none."""
        count = -1
        while count != len(self.frames):
            count = len(self.frames)
            time.sleep(quiet)
        self.running = False
        self.join()
        _, drops = abi.TPACKET_STATS.unpack(
            self.sock.getsockopt(abi.SOL_PACKET, abi.PACKET_STATISTICS, abi.TPACKET_STATS.size))
        assert drops == 0, f"the test's own capture dropped {drops} frames: its numbers mean nothing"
        return self.frames


def marked_inner(seq: int, size: int) -> bytes:
    body = inner_frame(size, seed=seq)
    return body[:14] + MAGIC + seq.to_bytes(4, "big") + body[26:]


def send(sock: socket.socket, frame: bytes) -> bool:
    """Send one frame; False when the kernel refuses it (too short to be Ethernet, too big for the MTU)."""
    try:
        sock.send(frame)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EMSGSIZE):
            return False
        raise
    return True


def delivered(wire: bytes) -> bool:
    """Whether a received frame reaches packet sockets: a tagged one needs 20 bytes to be untagged."""
    return not (wire[12:14] in (b"\x81\x00", b"\x88\xa8") and len(wire) < 20)


def passes_filter(wire: bytes) -> bool:
    """-F as the spec words it: op_code 1, and not 0x08ab at offset 38 (a frame without one is refused)."""
    return len(wire) >= 40 and wire[18] >> 4 == 1 and wire[38:40] != b"\x08\xab"


def hostile_net_frames(rng: random.Random) -> list[bytes]:
    """Everything but well-formed EOE frames, shuffled."""
    def eoe(size: int, op_code: int = 1, ethertype: int = 0x0800) -> bytes:
        """An EOE frame of exactly `size` bytes: cut short, or grown past what its length field can say."""
        inner = inner_frame(min(max(size - 22, 14), MAX_INNER), seed=size, ethertype=ethertype)
        frame = eoe_frame(inner, op_code=op_code)
        return (frame + rng.randbytes(max(0, size - len(frame))))[:size]

    def lying(frame: bytes, length: int) -> bytes:
        return frame[:16] + (length & 0xFFFF).to_bytes(2, "big") + frame[18:]  # also a wrapped one

    frames = []
    for size in range(MIN_EOE):  # runts: random, and EOE frames cut inside the header or the tag
        frames += [rng.randbytes(size), eoe(size)]
    frames += [eoe(size, ethertype=0x8100) for size in range(MIN_EOE, 42)]  # truncated inner headers
    for size in (TAGGED_MAX + 1, TAGGED_MAX, TAGGED_MAX - 1, UNTAGGED_MAX + 1, UNTAGGED_MAX, 65535, 40000):
        frames += [eoe(size), eoe(size, op_code=8), rng.randbytes(size)]
    for size in (36, 60, 86, 1500, TAGGED_MAX):
        real = eoe(size)
        frames += [lying(real, length) for length in (0, 4, len(real) - 19, len(real) - 17, 0x7FFF, 0xFFFF)]
    tagged = inner_frame(100, ethertype=0x8100)
    control = tagged[:16] + b"\x08\xab" + tagged[18:]
    ipv4_2219 = inner_frame(2233)[:16] + (2219).to_bytes(2, "big") + inner_frame(2233)[18:]  # offset 38 = 0x08ab
    for op_code in (0, 1, 8, 15):
        frames += [eoe_frame(control, op_code=op_code), eoe_frame(tagged, op_code=op_code),
                   eoe_frame(ipv4_2219, op_code=op_code)]
    for _ in range(300):
        size = rng.choice((rng.randint(0, 64), rng.randint(14, 1514), rng.randint(14, 1514), rng.randint(14, 9000)))
        frames.append(rng.randbytes(size))
    frames += [rng.randbytes(rng.randint(9000, UNTAGGED_MAX)) for _ in range(8)]
    rng.shuffle(frames)
    return frames


def stats(eoe_lab: EoeLab) -> dict[str, dict]:
    """The live counters, once the control loop has collected the socket's queue drops (every 0.5 s)."""
    time.sleep(0.7)
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0", "--json"])
    assert out.returncode == 0, out.stderr
    counters = json.loads(out.stdout)["counters"]
    for direction in counters.values():
        direction["drops"] = {reason: n or 0 for reason, n in direction["drops"].items()}
    return counters


def accounted(direction: dict) -> int:
    return direction["frames"] + sum(direction["drops"].values())


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(frame == candidate for candidate in it) for frame in part)


@pytest.fixture
def wide_lab(eoe_lab: EoeLab) -> EoeLab:
    eoe_lab.ip("link", "set", "net0", "mtu", str(MTU))
    eoe_lab.ip("link", "set", "peer0", "mtu", str(MTU))
    return eoe_lab


@pytest.mark.parametrize("flags", [(), ("-F",)], ids=["plain", "filter"])
def test_hostile_wire_both_ways(wide_lab: EoeLab, flags: tuple[str, ...]):
    """One forwarder takes a hostile network side, then a hostile TAP side, and exits cleanly."""
    fwd = wide_lab.start("--tap-mtu", str(TAP_MTU), *flags)
    flood_network_side(wide_lab, fwd, filtered=bool(flags))
    flood_tap_side(wide_lab, fwd)
    assert fwd.stop() == 0, fwd.output
    assert "Traceback" not in fwd.output, fwd.output


def flood_network_side(eoe_lab: EoeLab, fwd: Forwarder, filtered: bool) -> None:
    """Hostile frames in batches, each closed by a marked valid frame whose arrival paces the next."""
    rng = random.Random(0xE0E)
    peer, tap = eoe_lab.socket("peer0"), Capture(eoe_lab.socket("tap0"))
    sent: list[bytes] = []
    markers = lost = 0
    hostile = hostile_net_frames(rng)
    while hostile:
        batch: list[bytes] = []
        size = 0
        while hostile and len(batch) < BATCH_FRAMES and size < BATCH_BYTES:
            batch.append(hostile.pop())
            size += len(batch[-1])
        markers += 1
        marker_size = rng.choice((26, 42, 64, 65, 100, 1500, 9000, LONGEST_FORWARDED))
        batch.append(eoe_frame(marked_inner(markers, marker_size)))
        sent += [frame for frame in batch if send(peer, frame)]
        lost += not tap.wait_for(markers)
    received = tap.stop()
    assert fwd.proc.poll() is None, fwd.output
    assert max(map(len, sent)) == TAGGED_MAX, "the kernel should send a tagged frame of MTU + 18 bytes"

    reached = [w for w in sent if delivered(w) and (not filtered or passes_filter(w))]
    # A socket filter's drops are never counted; the kernel datapath counts what -F refuses.
    refused = len([w for w in sent if delivered(w) and filtered and not passes_filter(w)]) if UNDER_EBPF else 0
    runts = [w for w in reached if len(w) < MIN_EOE]
    too_big = [w for w in reached if len(w) - 22 > LONGEST_FORWARDED]
    forwarded = [w[22:] for w in reached if MIN_EOE <= len(w) <= LONGEST_FORWARDED + 22]
    expected = [inner for inner in forwarded if delivered(inner)]  # a too short tagged one is freed on tap0
    counters = stats(eoe_lab)["net_to_service"]
    drops = counters["drops"]
    assert drops["filtered"] == refused, counters
    assert accounted(counters) == len(reached) + refused, counters  # in = forwarded + every drop reason
    assert drops["runt"] + drops["queue_overflow"] >= len(runts) >= drops["runt"]
    if drops["queue_overflow"]:  # which frames the kernel dropped is unknown: order and content still hold
        assert is_subsequence(received, expected)
        return
    assert lost == 0
    assert {reason: n for reason, n in drops.items() if n} == (({"runt": len(runts)} if runts else {})
                                                               | ({"filtered": refused} if refused else {})
                                                               | ({"too_big": len(too_big)} if too_big else {}))
    assert counters["frames"] == len(forwarded)
    assert len(received) == len(expected)
    for i, (got, want) in enumerate(zip(received, expected)):
        assert got == want, f"frame {i} of {len(expected)}: {len(got)} bytes, expected {len(want)}"


def flood_tap_side(eoe_lab: EoeLab, fwd: Forwarder) -> None:
    """Random inner frames of every size the TAP carries: each is encapsulated exactly, or counted too big."""
    rng = random.Random(0x7A9)
    tap, peer = eoe_lab.socket("tap0"), Capture(eoe_lab.socket("peer0"))
    tap.setsockopt(abi.SOL_PACKET, abi.PACKET_QDISC_BYPASS, 1)  # no qdisc to reorder flows
    sizes = [14, 15, 42, 59, 60, 63, 64, 65, 1514, MAX_INNER - 1, MAX_INNER, MAX_INNER + 1, TAP_MTU + 14,
             TAP_MTU + 15]
    sizes += [rng.randint(14, 65535) for _ in range(40)] + [rng.randint(14, 1514) for _ in range(60)]
    inners = [rng.randbytes(size) for size in sizes]
    inners += [inner_frame(size, ethertype=0x8100) for size in (MAX_INNER, TAP_MTU + 18)]  # a VLAN on the TAP
    rng.shuffle(inners)
    before = stats(eoe_lab)["service_to_net"]
    sent: list[bytes] = []
    for start in range(0, len(inners), 8):
        batch = inners[start:start + 8] + [marked_inner(1_000_000 + start, 100)]
        sent += [inner for inner in batch if send(tap, inner)]
        assert peer.wait_for(1_000_000 + start), f"marker {start} never reached the wire"
    received = peer.stop()
    assert fwd.proc.poll() is None, fwd.output

    for frame in received:
        assert int.from_bytes(frame[16:18], "big") == len(frame) - 18 and len(frame) >= 22 + 64
    expected = [eoe_frame(inner, op_code=8, downstream=0, dst=SWITCH_MAC, src=BOARD_MAC)  # the default header
                for inner in sent if len(inner) <= MAX_INNER]
    assert len(received) == len(expected)
    for i, (got, want) in enumerate(zip(received, expected)):
        assert got == want, f"frame {i} of {len(expected)}: {len(got)} bytes, expected {len(want)}"
    after = stats(eoe_lab)["service_to_net"]
    assert after["frames"] - before["frames"] == len(expected)
    too_big = after["drops"]["too_big"] - before["drops"]["too_big"]
    assert too_big == len(sent) - len(expected) > 0
    assert accounted(after) - accounted(before) == len(sent)
