"""The relays' classic BPF programs in the kernel (root): a veth pair really lifts the 802.1Q tag first.

Frames go out of one end of a veth pair through a raw socket with their tag
inline; the receive path of the other end moves the outer tag into skb
metadata before the filter runs. What a filtered socket receives must be
exactly what the pure wire-view predicates accept, and an unfiltered socket
beside it proves the refused frames did arrive (refused, not lost).
"""

from __future__ import annotations

import errno
import random
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from eoe_filter.lab import Lab, in_netns
from eoe_filter.link import abi
from eoe_filter.link.abi import ABI
from eoe_filter.link.bpf_classic import Program, attach, dhcp_client_filter, eoe_downstream_filter
from eoe_filter.wire.eoe import CONTROL_PROTOCOL, EoeHeader, OpCode, accepts_downstream
from eoe_filter.wire.vlan import TAG_LEN, TPID_8021AD, TPID_8021Q, TPID_OFFSET, is_dhcp_client_frame, restore_tag_into

pytestmark = pytest.mark.system

JUMBO_MTU = 9000
TX, RX = "efbpf-tx", "efbpf-rx"
STAMP = b"\x02\xef\xbf"  # source MAC prefix of this test's frames; the index follows
MIN_UNTAGGABLE = TPID_OFFSET + TAG_LEN + 4  # skb_vlan_untag frees a tagged frame shorter than this


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace (efbpf-<random>-...) with a veth pair at MTU 9000, removed afterwards."""
    with Lab("efbpf") as lab:
        name = lab.netns("bpf")
        lab.veth(name, TX, name, RX, mtu=JUMBO_MTU)
        wait_for_path(name)
        yield name


def wait_for_path(ns: str, timeout: float = 5.0) -> None:
    """Until linkwatch swaps the noop qdisc for a real one, frames sent on a new veth are
    dropped silently: probe until one crosses (probes carry another stamp, so no test counts them)."""
    probe = bytes(Ether(src="02:ef:b0:00:00:00") / Raw(bytes(50)))
    with receiver(ns, None) as control, sender(ns) as tx:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tx.send(probe)
            if select.select([control], [], [], 0.05)[0]:
                return
    raise AssertionError(f"no frame crossed the veth pair within {timeout}s")


def receiver(ns: str, program: Program | None) -> socket.socket:
    """A socket on RX; with protocol 0 it receives nothing until bind(), so the filter is in
    place before the first frame can be queued (binding with ETH_P_ALL at socket() time
    would let frames in unfiltered between socket() and SO_ATTACH_FILTER)."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if program is not None:
                attach(sock, program)
            sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUFFORCE, 1 << 24)
            sock.setsockopt(abi.SOL_PACKET, abi.PACKET_AUXDATA, 1)
            sock.bind((RX, abi.ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
    return sock


def sender(ns: str) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((TX, 0))
    return sock


def wire_view(data: bytes, ancillary: list[tuple[int, int, bytes]]) -> bytes:
    """Put back the tag the kernel lifted, from PACKET_AUXDATA; check nothing was cut."""
    for level, kind, payload in ancillary:
        if (level, kind) == (abi.SOL_PACKET, abi.PACKET_AUXDATA):
            status, length, snaplen, _, _, tci, tpid = abi.TPACKET_AUXDATA.unpack_from(payload)
            assert length == snaplen == len(data), "the filter's accepted length truncated the frame"
            if not status & abi.TP_STATUS_VLAN_VALID:
                return data
            buf = bytearray(TAG_LEN) + data
            restore_tag_into(buf, TAG_LEN, tpid if status & abi.TP_STATUS_VLAN_TPID_VALID else TPID_8021Q, tci)
            return bytes(buf)
    raise AssertionError("no PACKET_AUXDATA")


def receive_all(sock: socket.socket, quiet: float = 0.5) -> list[bytes]:
    frames = []
    while select.select([sock], [], [], quiet)[0]:
        data, ancillary, flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(abi.TPACKET_AUXDATA.size))
        assert not flags & socket.MSG_TRUNC
        if data[6:9] == STAMP:
            frames.append(wire_view(data, ancillary))
    return frames


def exchange(ns: str, program: Program, frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Send `frames` from TX; what RX's filtered and unfiltered sockets received."""
    with receiver(ns, program) as filtered, receiver(ns, None) as control, sender(ns) as tx:
        for frame in frames:
            tx.send(frame)
        got, seen = receive_all(filtered), receive_all(control)
        drops = abi.TPACKET_STATS.unpack(filtered.getsockopt(abi.SOL_PACKET, abi.PACKET_STATISTICS,
                                                             abi.TPACKET_STATS.size))[1]
    assert drops == 0
    return got, seen


def stamped(frames: list[bytes]) -> list[bytes]:
    """Each frame with a unique source MAC (no rule reads it), so every arrival is identified."""
    return [f[:6] + STAMP + i.to_bytes(3, "big") + f[12:] for i, f in enumerate(frames)]


def delivered(frame: bytes) -> bool:
    tagged = frame[TPID_OFFSET:TPID_OFFSET + 2] in (b"\x81\x00", b"\x88\xa8")
    return not tagged or len(frame) >= MIN_UNTAGGABLE


def check(ns: str, program: Program, predicate: Callable[[bytes], bool], frames: list[bytes]) -> None:
    frames = stamped(frames)
    got, seen = exchange(ns, program, frames)
    assert sorted(seen) == sorted(f for f in frames if delivered(f))
    expected = [f for f in frames if predicate(f)]
    assert expected, "no accepted frame: the test would prove nothing"
    assert sorted(got) == sorted(expected)


# --- EOE ---------------------------------------------------------------------

def eoe(op_code: int, inner: bytes, tpid: int = TPID_8021Q, vid: int = 4094) -> bytes:
    return EoeHeader(tpid=tpid, vid=vid, op_code=op_code, downstream=1).pack(len(inner) + 4) + inner


def inner_tagged(ethertype: int, size: int = 64) -> bytes:
    head = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=7, type=ethertype))
    return head + bytes(size - len(head))


def inner_ipv4(total_length: int) -> bytes:
    return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(dst="192.0.2.2")
                 / Raw(bytes(total_length - 20)))


def random_eoe(rng: random.Random) -> bytes:
    header = EoeHeader(tpid=rng.choice([TPID_8021Q] * 6 + [TPID_8021AD, 0x0800]), vid=rng.randrange(4096),
                       op_code=OpCode.SWITCH_DOWNSTREAM if rng.random() < 0.7 else rng.randrange(16),
                       flag=rng.randrange(8), itf=rng.randrange(1 << 16))
    inner = bytearray(rng.randbytes(rng.randrange(14, 100)))
    if len(inner) >= 18 and rng.random() < 0.25:
        inner[16:18] = CONTROL_PROTOCOL.to_bytes(2, "big")
    return header.pack(len(inner) + 4) + bytes(inner)


def test_eoe_filter_in_the_kernel(ns):
    good = eoe(OpCode.SWITCH_DOWNSTREAM, inner_tagged(0x0800))
    frames = [
        good, eoe(OpCode.A2A_SWITCH, inner_tagged(0x0800)), eoe(0, inner_tagged(0x0800)),
        eoe(OpCode.SWITCH_DOWNSTREAM, inner_tagged(CONTROL_PROTOCOL)),
        eoe(1, inner_ipv4(2219)), eoe(1, inner_ipv4(2218)),  # offset 38 is the IP total length here
        eoe(1, inner_tagged(0x0800), tpid=TPID_8021AD),  # an S-tag is lifted as well
        eoe(1, inner_tagged(0x0800), tpid=0x0800), eoe(1, inner_tagged(CONTROL_PROTOCOL), tpid=0x0800),
        good[:14], good[:19], good[:20], good[:30], good[:39], good[:40],  # runts
    ]
    rng = random.Random(0xE0E)
    frames += [random_eoe(rng) for _ in range(300)]
    check(ns, eoe_downstream_filter(), accepts_downstream, frames)


def test_the_kernel_lifts_the_tag_before_the_filter(ns):
    """The premise of the two-view programs: a tagged frame reaches the socket 4 bytes shorter."""
    frame = stamped([eoe(1, inner_tagged(0x0800))])[0]
    with receiver(ns, None) as control, sender(ns) as tx:
        tx.send(frame)
        assert select.select([control], [], [], 2.0)[0]
        data, ancillary, _, _ = control.recvmsg(1 << 16, socket.CMSG_SPACE(abi.TPACKET_AUXDATA.size))
    status, *_, tci, tpid = abi.TPACKET_AUXDATA.unpack_from(ancillary[0][2])
    assert len(data) == len(frame) - TAG_LEN
    assert status & abi.TP_STATUS_VLAN_VALID and (tci, tpid) == (0x0FFE, TPID_8021Q)
    assert wire_view(data, ancillary) == frame


@pytest.mark.parametrize("size", [9000, JUMBO_MTU + 18])
def test_jumbo_eoe_frame_arrives_whole(ns, size):
    """Accepted length 0xFFFFFFFF: a 9000-byte frame (the MTU + 18 for a tagged one at most) is not cut."""
    inner = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP())
    frame = stamped([eoe(1, inner + bytes(i & 0xFF for i in range(size - 22 - len(inner))))])[0]
    assert len(frame) == size
    got, _ = exchange(ns, eoe_downstream_filter(), [frame])
    assert got == [frame]


# --- DHCP --------------------------------------------------------------------

def offer(vid: int = 100, dport: int = 68, **ip: object) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:67") / Dot1Q(vlan=vid)
                 / IP(src="192.0.2.1", dst="255.255.255.255", **ip) / UDP(sport=67, dport=dport)
                 / Raw(b"x" * 40))


def random_dhcp(rng: random.Random) -> bytes:
    """Mostly-valid fields, each spoiled now and then; the port goes where the rule looks."""
    def pick(valid: int, bits: int = 16) -> int:
        return valid if rng.random() < 0.85 else rng.getrandbits(bits)

    ihl = pick(5, 4)
    ip = bytearray(rng.randbytes(20 + 4 * max(0, ihl - 5)))
    ip[0] = pick(4, 4) << 4 | ihl
    ip[6:8] = pick(rng.choice([0, 0x4000, 0x2000])).to_bytes(2, "big")
    ip[9] = pick(17, 8)
    tci = rng.getrandbits(4) << 12 | (0xFFE if rng.random() < 0.1 else rng.randrange(4096))
    frame = bytearray(rng.randbytes(12) + pick(TPID_8021Q).to_bytes(2, "big") + tci.to_bytes(2, "big")
                      + pick(0x0800).to_bytes(2, "big") + ip + rng.randbytes(rng.randrange(4, 30)))
    port_at = 18 + 4 * ihl + 2
    frame[port_at:port_at + 2] = pick(68).to_bytes(2, "big")
    return bytes(frame if rng.random() < 0.85 else frame[:rng.randrange(14, len(frame) + 1)])


def test_dhcp_filter_in_the_kernel(ns):
    frames = [offer(vid) for vid in (0, 1, 100, 4093, 4094, 4095)]
    frames += [offer(dport=67), offer(flags="MF"), offer(frag=185), offer(frag=1),
               offer(options=[IPOption_NOP()] * 4), offer(options=[IPOption_NOP()] * 40),
               offer(dport=67, options=[IPOption_NOP()] * 40)]
    frames += [bytes(p) for p in (
        Ether() / IP() / UDP(dport=68),
        Ether() / Dot1AD(vlan=100) / IP() / UDP(dport=68),
        Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=100) / IP() / UDP(dport=68),
        Ether() / Dot1Q(vlan=100) / Dot1Q(vlan=100) / IP() / UDP(dport=68),
        Ether() / Dot1Q(vlan=100) / IP() / TCP(dport=68),
        Ether() / Dot1Q(vlan=100) / IP() / ICMP(),
    )]
    frames += [offer()[:cut] for cut in (14, 18, 19, 20, 37, 41, 42)]
    rng = random.Random(0xD4C9)
    frames += [random_dhcp(rng) for _ in range(300)]
    check(ns, dhcp_client_filter(), is_dhcp_client_frame, frames)


# --- the socket option numbers, as the kernel understands them ---------------

def test_filter_socket_options_in_the_kernel(ns):
    """SO_ATTACH_FILTER / SO_DETACH_FILTER / SO_LOCK_FILTER for this architecture do what they say."""
    with receiver(ns, eoe_downstream_filter()) as sock:
        sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_DETACH_FILTER, 0)
        with pytest.raises(OSError) as nothing_attached:
            sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_DETACH_FILTER, 0)
        assert nothing_attached.value.errno == errno.ENOENT
        attach(sock, dhcp_client_filter())
        sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_LOCK_FILTER, 1)
        with pytest.raises(OSError) as locked:
            sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_DETACH_FILTER, 0)
        assert locked.value.errno == errno.EPERM
        assert sock.getsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUF) >= 1 << 24
