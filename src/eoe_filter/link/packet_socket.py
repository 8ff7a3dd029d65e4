"""AF_PACKET raw sockets that hand the forwarder the wire view of each frame.

The kernel lifts the outer 802.1Q/802.1ad tag of every received frame into
metadata before a packet socket (or its filter) sees it; `receive_into`
puts the tag back from PACKET_AUXDATA, as libpcap does, so that relays work
on the bytes that were on the wire.
"""

from __future__ import annotations

import errno
import socket

from ..wire.vlan import TPID_8021Q, restore_tag_into
from . import abi
from .abi import ABI
from .bpf_classic import Program, attach, set_fanout_program

_ANC_SPACE = socket.CMSG_SPACE(abi.TPACKET_AUXDATA.size)
_VLAN_VALID = abi.TP_STATUS_VLAN_VALID
_TPID_VALID = abi.TP_STATUS_VLAN_TPID_VALID
_PACKET_OUTGOING = socket.PACKET_OUTGOING
SOCKET_BUFFER = 4 << 20
RX_HEADROOM = 4
"""Bytes a receive buffer keeps free before the frame, to re-insert a lifted tag."""


MUTED_PROTOCOL = 0x05FF
"""A protocol no Ethernet frame carries (see PacketSocket.mute)."""


class PacketSocket:
    """A raw socket bound to one interface index, outgoing frames ignored."""

    def __init__(self, program: Program | None = None) -> None:
        self.ifname = ""
        self.ifindex = 0
        # Protocol 0 receives nothing until bound: the filter is in place before the first frame.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_IGNORE_OUTGOING, 1)
            self._skip_outgoing = False
        except OSError as e:  # Linux < 4.20: look at sll_pkttype instead
            if e.errno != errno.ENOPROTOOPT:
                raise
            self._skip_outgoing = True
        self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_AUXDATA, 1)
        self._grow_buffers()
        if program is not None:
            attach(self.sock, program)

    def _grow_buffers(self) -> None:
        """Room for bursts: a forwarder's queue should absorb a few ms of line rate, not ~200 frames."""
        for forced, plain in ((ABI.SO_RCVBUFFORCE, ABI.SO_RCVBUF), (ABI.SO_SNDBUFFORCE, ABI.SO_SNDBUF)):
            try:
                self.sock.setsockopt(ABI.SOL_SOCKET, forced, SOCKET_BUFFER)
            except PermissionError:  # without CAP_NET_ADMIN: as much as net.core.*mem_max allows
                self.sock.setsockopt(ABI.SOL_SOCKET, plain, SOCKET_BUFFER)

    def mute(self) -> None:
        """Receive nothing, at no cost per frame; it still sends and keeps its promiscuous membership.

        Below 0x0600 an Ethernet type field is a length, and the stack files
        such frames as 802.2/802.3: no frame is ever of protocol 0x05ff
        (binding to protocol 0 would keep the old one).
        """
        self.sock.bind((self.ifname, MUTED_PROTOCOL))

    def bypass_qdisc(self) -> None:
        """Hand what we send straight to the driver (Linux 3.14): no qdisc, and invisible to packet taps."""
        self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_QDISC_BYPASS, 1)

    def bind(self, ifname: str, ifindex: int) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.sock.bind((ifname, abi.ETH_P_ALL))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def gone(self) -> str | None:
        """Never, for the forwarding loops: a deleted interface is the control loop's business,
        which re-binds this very socket when the interface comes back."""
        return None

    def add_promiscuous(self, ifindex: int) -> None:
        """Socket-scoped promiscuity: the kernel drops it when the socket closes, even after a crash."""
        mreq = abi.PACKET_MREQ.pack(ifindex, abi.PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_ADD_MEMBERSHIP, mreq)

    def join_fanout(self, group: int, program: Program) -> int:
        """Join PACKET_FANOUT_CBPF group `group` and return its id; 0 makes a new group with an id
        unused in this namespace (Linux 4.19), whose member for each frame `program` picks.

        A member cannot be bound again (EINVAL): bind first.
        """
        # The group, not its members, decides whether it sees our own outgoing frames.
        kind = abi.PACKET_FANOUT_CBPF | abi.PACKET_FANOUT_FLAG_IGNORE_OUTGOING
        if group:
            self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_FANOUT, group | kind << 16)
            return group
        self.sock.setsockopt(abi.SOL_PACKET, abi.PACKET_FANOUT, (kind | abi.PACKET_FANOUT_FLAG_UNIQUEID) << 16)
        set_fanout_program(self.sock, program)
        return self.sock.getsockopt(abi.SOL_PACKET, abi.PACKET_FANOUT) & 0xFFFF

    def take_statistics(self) -> tuple[int, int]:
        """(frames received, frames dropped on the queue) since the last call; the kernel resets them."""
        raw = self.sock.getsockopt(abi.SOL_PACKET, abi.PACKET_STATISTICS, abi.TPACKET_STATS.size)
        packets, drops = abi.TPACKET_STATS.unpack(raw)
        return packets, drops

    def receive_into(self, buf: bytearray, rx: memoryview, at: int) -> tuple[int, int]:
        """Receive one frame into rx (= buf[at:]) and return its wire view as (start, end).

        Returns (0, -1) for a frame larger than the buffer (never used
        truncated) and (0, 0) for our own outgoing frame on old kernels.
        Raises BlockingIOError when the queue is empty.
        """
        n, anc, flags, addr = self.sock.recvmsg_into((rx,), _ANC_SPACE, socket.MSG_DONTWAIT)
        if self._skip_outgoing and addr[2] == _PACKET_OUTGOING:
            return 0, 0
        if flags & socket.MSG_TRUNC:
            return 0, -1
        tag = _lifted_tag(anc)
        return (at if tag is None else restore_tag_into(buf, at, *tag)), at + n

    def send(self, frame: memoryview) -> None:
        self.sock.send(frame)


def wire_view(sock: socket.socket, bufsize: int = 65536) -> bytes:
    """One frame from `sock` (blocking) as it was on the wire: for tools and tests, not the hot path."""
    buf = bytearray(RX_HEADROOM + bufsize)
    n, anc, _, _ = sock.recvmsg_into((memoryview(buf)[RX_HEADROOM:],), _ANC_SPACE)
    tag = _lifted_tag(anc)
    start = RX_HEADROOM if tag is None else restore_tag_into(buf, RX_HEADROOM, *tag)
    return bytes(buf[start:RX_HEADROOM + n])


def _lifted_tag(anc: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """(TPID, TCI) of the tag the kernel moved into PACKET_AUXDATA, if it did."""
    for level, kind, data in anc:
        if level == abi.SOL_PACKET and kind == abi.PACKET_AUXDATA:
            status, _, _, _, _, tci, tpid = abi.TPACKET_AUXDATA.unpack_from(data)
            if status & _VLAN_VALID:
                return (tpid if status & _TPID_VALID else TPID_8021Q), tci
    return None
