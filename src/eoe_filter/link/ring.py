"""A TPACKET_V2 receive ring (PACKET_RX_RING): the kernel copies frames into shared memory.

Reading a frame from the ring costs no system call, and the copy happens in
the kernel's receive path (softirq) instead of in a recvmsg() of ours. V2,
not V3: a V3 block is handed over only when full or when its retire timer
fires, which adds milliseconds of latency at low rates.

Slots are sized for the interface's MTU at start-up. A larger frame (the
MTU was raised later) is not lost: with PACKET_COPY_THRESH the kernel also
queues it whole on the socket and marks its slot TP_STATUS_COPY, so the
reader takes it from the queue at that point of the ring. Only when the
socket's receive buffer is full too does a frame arrive with tp_snaplen <
tp_len; it must then be dropped, never used truncated.

The kernel publishes a slot by writing tp_status after the frame (smp_wmb);
the interpreter reads the status, then the header, then the data, each load
hundreds of instructions behind the previous one, far beyond any CPU's
reordering window.

The reader hands a slot back by making tp_status TP_STATUS_KERNEL (0), and
the kernel may refill the slot as soon as it reads 0: that must be the
reader's last store to the slot, and a single one. A memoryview slice
assignment copies each word with memcpy(), which glibc does in two stores
for 4 bytes: a reader preempted between them erases the status of a frame
the kernel wrote meanwhile, and that slot, left empty behind the kernel, is
then filled a lap late, every lap (frames out of order). So the flag bytes
of tp_status (FLAG_BYTES) are cleared while TP_STATUS_USER still holds the
slot, and the byte of TP_STATUS_USER (USER_BYTE) last, in a one-byte store:
a single store on every architecture.

Structures are kernel ABI: native byte order and layout (ctypes), never a
wire format.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import socket
import struct
import sys

from . import abi

TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 2
TPACKET_ALIGNMENT = 16

RING_BYTES = 4 << 20
"""What one ring may take (pinned kernel memory, also mapped here): a few ms of line rate."""
MIN_SLOTS = 64


class Tpacket2Hdr(ctypes.Structure):
    """struct tpacket2_hdr (linux/if_packet.h)."""

    _fields_ = [("tp_status", ctypes.c_uint32), ("tp_len", ctypes.c_uint32), ("tp_snaplen", ctypes.c_uint32),
                ("tp_mac", ctypes.c_uint16), ("tp_net", ctypes.c_uint16), ("tp_sec", ctypes.c_uint32),
                ("tp_nsec", ctypes.c_uint32), ("tp_vlan_tci", ctypes.c_uint16), ("tp_vlan_tpid", ctypes.c_uint16),
                ("tp_padding", ctypes.c_uint8 * 4)]


class SockaddrLl(ctypes.Structure):
    """struct sockaddr_ll (linux/if_packet.h); sll_protocol is in network order, as the kernel keeps it."""

    _fields_ = [("sll_family", ctypes.c_ushort), ("sll_protocol", ctypes.c_uint16), ("sll_ifindex", ctypes.c_int),
                ("sll_hatype", ctypes.c_ushort), ("sll_pkttype", ctypes.c_ubyte), ("sll_halen", ctypes.c_ubyte),
                ("sll_addr", ctypes.c_ubyte * 8)]


class TpacketReq(ctypes.Structure):
    """struct tpacket_req, the PACKET_RX_RING argument."""

    _fields_ = [("tp_block_size", ctypes.c_uint), ("tp_block_nr", ctypes.c_uint),
                ("tp_frame_size", ctypes.c_uint), ("tp_frame_nr", ctypes.c_uint)]


def tpacket_align(n: int) -> int:
    return (n + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


USER_BYTE = Tpacket2Hdr.tp_status.offset + (0 if sys.byteorder == "little" else 3)
"""Where in a slot the byte of tp_status holding TP_STATUS_USER is (native order)."""
FLAG_BYTES = Tpacket2Hdr.tp_status.offset + (1 if sys.byteorder == "little" else 0)
"""Where in a slot the other three bytes of tp_status start: flags that need clearing when tp_status > 0xff."""
SLL_OFFSET = tpacket_align(ctypes.sizeof(Tpacket2Hdr))
"""The kernel writes a sockaddr_ll behind the header of every slot."""
TPACKET2_HDRLEN = SLL_OFFSET + ctypes.sizeof(SockaddrLl)


def native_reader(fields: list[tuple[type[ctypes.Structure], int, str]]) -> struct.Struct:
    """A struct.Struct that unpacks the named fields at their ctypes offsets, in order, in one call.

    `fields` lists (structure, where the structure starts, field name); the
    offsets come from ctypes, so the layout is declared only once.
    """
    fmt, at = "=", 0
    for cls, base, name in fields:
        desc = getattr(cls, name)
        offset = base + desc.offset
        if offset < at:
            raise ValueError(f"{cls.__name__}.{name} is out of order")
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}[desc.size]
        fmt += f"{offset - at}x{code}" if offset > at else code
        at = offset + desc.size
    return struct.Struct(fmt)


SLOT_HEADER = native_reader([(Tpacket2Hdr, 0, "tp_status"), (Tpacket2Hdr, 0, "tp_len"),
                             (Tpacket2Hdr, 0, "tp_snaplen"), (Tpacket2Hdr, 0, "tp_mac"),
                             (Tpacket2Hdr, 0, "tp_vlan_tci"), (Tpacket2Hdr, 0, "tp_vlan_tpid"),
                             (SockaddrLl, SLL_OFFSET, "sll_pkttype")])
"""tp_status, tp_len, tp_snaplen, tp_mac, tp_vlan_tci, tp_vlan_tpid, sll_pkttype of one slot."""


def interface_mtu(sock: socket.socket, ifname: str) -> int:
    """SIOCGIFMTU through any socket (no netlink: the worker processes do not share the control's)."""
    req = abi.ifreq(ifname)
    fcntl.ioctl(sock.fileno(), abi.SIOCGIFMTU, req)
    return struct.unpack_from("=i", req, abi.IFNAMSIZ)[0]


def geometry(max_frame: int, headroom: int, page_size: int = mmap.PAGESIZE, budget: int = RING_BYTES) -> TpacketReq:
    """Slots for frames of up to `max_frame` bytes behind `headroom` free bytes, in blocks of ~16 pages.

    A frame starts at most TPACKET_ALIGN(hdrlen + 16) + reserve into its slot
    (af_packet.c's macoff), and an edit may pad a short frame: room for both.
    """
    frame_size = tpacket_align(tpacket_align(TPACKET2_HDRLEN + 16) + headroom + max_frame + 64)
    per_block = max(1, (16 * page_size) // frame_size)
    block_size = -(-per_block * frame_size // page_size) * page_size
    blocks = max(-(-MIN_SLOTS // per_block), budget // block_size)
    return TpacketReq(block_size, blocks, frame_size, blocks * per_block)


class RxRing:
    """PACKET_RX_RING on `sock`; map() makes it readable in the calling process.

    `max_frame` is the largest frame a slot holds, `headroom` the free bytes
    an in-place edit may need before the frame (PACKET_RESERVE). Slot i
    starts at offsets[i]; the slots of one block follow each other every
    `frame_size` bytes, `per_block` of them. A ring installed earlier on the
    socket is replaced. Installing a ring purges the socket's receive queue,
    and the socket misses frames while the kernel swaps its receive
    function: read the queue first, and install the ring before announcing
    readiness.
    """

    def __init__(self, sock: socket.socket, max_frame: int, headroom: int, budget: int = RING_BYTES) -> None:
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_RX_RING, bytes(TpacketReq()))  # no ring: version is settable
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_VERSION, TPACKET_V2)
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_RESERVE, headroom)
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_COPY_THRESH, 1)
        req = geometry(max_frame, headroom, budget=budget)
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_RX_RING, bytes(req))
        self.sock = sock
        self.size = req.tp_block_size * req.tp_block_nr
        self.frame_size = req.tp_frame_size
        self.per_block = req.tp_block_size // req.tp_frame_size
        self.offsets = [b * req.tp_block_size + f * req.tp_frame_size
                        for b in range(req.tp_block_nr) for f in range(self.per_block)]

    def map(self) -> tuple[memoryview, memoryview, int]:
        """(the ring's bytes, the same as native 32-bit words, its address): slot i's status is
        words[offsets[i] >> 2]. Mapped only by the process that reads it."""
        ring = mmap.mmap(self.sock.fileno(), self.size)
        view = memoryview(ring)
        return view, view.cast("I"), ctypes.addressof(ctypes.c_char.from_buffer(ring))
