"""Kernel ABI numbers for the running architecture, and the NATIVE-layout kernel structures.

The boards are MIPS64 big-endian while development happens on x86_64, and
the two disagree on ioctl encodings (`TUNSETIFF` is 0x400454ca on x86 but
0x800454ca on MIPS) and on socket option numbers (`SOL_SOCKET` is 0xffff on
MIPS), so nothing here is copied from one machine's headers: ioctl numbers
are computed from each architecture's `_IOC` layout (asm/ioctl.h) and socket
options come from a per-architecture table (asm/socket.h).

Every structure in this module is a kernel ABI structure: native byte order
and layout (`=`/`@` formats, ctypes), never a wire format. Wire formats are
big-endian and live in `eoe_filter.wire`.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

_INT_SIZE = 4  # sizeof(int) == sizeof(unsigned int) on every Linux ABI
_TUN_TYPE = "T"  # the tun driver's ioctl type letter (linux/if_tun.h)


@dataclass(frozen=True, slots=True)
class IocEncoding:
    """One `_IOC` layout: nr in bits 0-7, type in bits 8-15, then size bits, then direction bits."""

    size_bits: int
    none: int
    read: int
    write: int

    def ioc(self, direction: int, kind: str, nr: int, size: int) -> int:
        if not 0 <= size < 1 << self.size_bits:
            raise ValueError(f"ioctl argument size {size} does not fit {self.size_bits} bits")
        return direction << (16 + self.size_bits) | size << 16 | ord(kind) << 8 | nr

    def io(self, kind: str, nr: int) -> int:
        return self.ioc(self.none, kind, nr, 0)

    def ior(self, kind: str, nr: int, size: int) -> int:
        return self.ioc(self.read, kind, nr, size)

    def iow(self, kind: str, nr: int, size: int) -> int:
        return self.ioc(self.write, kind, nr, size)


GENERIC_IOC = IocEncoding(size_bits=14, none=0, read=2, write=1)
"""asm-generic/ioctl.h: x86, ARM, RISC-V, s390, LoongArch."""
PARISC_IOC = IocEncoding(size_bits=14, none=0, read=1, write=2)
"""parisc keeps the generic widths but swaps READ and WRITE."""
OSF_IOC = IocEncoding(size_bits=13, none=1, read=2, write=4)
"""MIPS, PowerPC, SPARC, Alpha: 3 direction bits (OSF/1 heritage), 13 size bits."""


@dataclass(frozen=True, slots=True)
class Abi:
    """The numbers one architecture family uses; the TUN* ioctls are derived from `ioc`.

    Attributes carry the kernel's macro names, so they grep alongside the headers.
    """

    machine: str
    ioc: IocEncoding
    SOL_SOCKET: int
    SO_SNDBUF: int
    SO_RCVBUF: int
    SO_SNDBUFFORCE: int
    SO_RCVBUFFORCE: int
    SO_ATTACH_FILTER: int
    SO_DETACH_FILTER: int
    SO_LOCK_FILTER: int
    SO_BUSY_POLL: int
    SO_ATTACH_BPF: int

    @property
    def SO_DETACH_BPF(self) -> int:
        """The kernel defines SO_DETACH_BPF as SO_DETACH_FILTER on every architecture."""
        return self.SO_DETACH_FILTER

    @property
    def TUNSETIFF(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 202, _INT_SIZE)

    @property
    def TUNSETPERSIST(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 203, _INT_SIZE)

    @property
    def TUNSETOWNER(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 204, _INT_SIZE)

    @property
    def TUNSETGROUP(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 206, _INT_SIZE)

    @property
    def TUNGETFEATURES(self) -> int:
        return self.ioc.ior(_TUN_TYPE, 207, _INT_SIZE)

    @property
    def TUNSETOFFLOAD(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 208, _INT_SIZE)

    @property
    def TUNGETIFF(self) -> int:
        return self.ioc.ior(_TUN_TYPE, 210, _INT_SIZE)

    @property
    def TUNSETVNETHDRSZ(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 216, _INT_SIZE)

    @property
    def TUNSETQUEUE(self) -> int:
        return self.ioc.iow(_TUN_TYPE, 217, _INT_SIZE)

    @property
    def TUNSETSTEERINGEBPF(self) -> int:
        """Declared `_IOR` in if_tun.h although userspace writes the fd: the number is what counts."""
        return self.ioc.ior(_TUN_TYPE, 224, _INT_SIZE)

    @property
    def TUNSETFILTEREBPF(self) -> int:
        """Declared `_IOR` like TUNSETSTEERINGEBPF."""
        return self.ioc.ior(_TUN_TYPE, 225, _INT_SIZE)


# Socket options per asm/socket.h, in the order of the Abi fields after `ioc`:
# SOL_SOCKET, SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE,
# SO_ATTACH_FILTER, SO_DETACH_FILTER, SO_LOCK_FILTER, SO_BUSY_POLL, SO_ATTACH_BPF.
_GENERIC_SO = (1, 7, 8, 32, 33, 26, 27, 44, 46, 50)  # asm-generic; powerpc and s390 agree on these
_MIPS_SO = (0xFFFF, 0x1001, 0x1002, 31, 33, 26, 27, 44, 46, 50)
_ALPHA_SO = (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 26, 27, 44, 46, 50)
_SPARC_SO = (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 0x1A, 0x1B, 0x28, 0x30, 0x34)
_PARISC_SO = (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 0x401A, 0x401B, 0x4025, 0x4027, 0x402B)

_FAMILIES: dict[str, tuple[IocEncoding, tuple[int, ...]]] = {
    "generic": (GENERIC_IOC, _GENERIC_SO),
    "mips": (OSF_IOC, _MIPS_SO),
    "powerpc": (OSF_IOC, _GENERIC_SO),
    "sparc": (OSF_IOC, _SPARC_SO),
    "alpha": (OSF_IOC, _ALPHA_SO),
    "parisc": (PARISC_IOC, _PARISC_SO),
}

_MACHINES: dict[str, str] = {
    **dict.fromkeys(("x86_64", "i386", "i486", "i586", "i686", "aarch64", "aarch64_be",
                     "riscv32", "riscv64", "s390", "s390x", "loongarch64"), "generic"),
    # `uname -m` says mips/mips64 whatever the endianness or the userland ABI (o32, n32, n64).
    **dict.fromkeys(("mips", "mips64"), "mips"),
    **dict.fromkeys(("ppc", "ppcle", "ppc64", "ppc64le"), "powerpc"),
    **dict.fromkeys(("sparc", "sparc64"), "sparc"),
    **dict.fromkeys(("parisc", "parisc64"), "parisc"),
    "alpha": "alpha",
}


def abi_for(machine: str) -> Abi:
    """The ABI of an `os.uname().machine` string; 32-bit ARM reports armv5tel, armv7l, armv8l...

    The family depends only on the architecture, not on its width or endianness:
    a 32-bit userland on a 64-bit kernel uses the same numbers.
    """
    family = "generic" if machine.startswith("arm") else _MACHINES.get(machine)
    if family is None:
        raise ValueError(f"unknown machine {machine!r}: its ioctl and socket option numbers are not known")
    ioc, sockopts = _FAMILIES[family]
    return Abi(machine, ioc, *sockopts)


ABI = abi_for(os.uname().machine)
"""The running machine's numbers; the rest of the code uses these."""

# Numbers that are the same on every architecture.
SOL_PACKET = 263
ETH_P_ALL = 0x0003  # in host order; socket.bind((ifname, ETH_P_ALL)) converts it, a raw sockaddr_ll needs htons

PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_RESERVE = 12
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1

TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933

# struct net_device flags (linux/if.h), for SIOCGIFFLAGS/SIOCSIFFLAGS.
IFF_UP = 0x0001
IFF_NOARP = 0x0080
IFF_PROMISC = 0x0100

# TUNSETIFF flags (linux/if_tun.h); they share the ifr_flags field with the names above.
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

TPACKET_AUXDATA = struct.Struct("=IIIHHHH")
"""NATIVE struct tpacket_auxdata: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid."""
TPACKET_STATS = struct.Struct("=II")
"""NATIVE struct tpacket_stats: tp_packets, tp_drops (PACKET_STATISTICS resets them on read)."""
PACKET_MREQ = struct.Struct("=iHH8s")
"""NATIVE struct packet_mreq: mr_ifindex, mr_type, mr_alen, mr_address."""

IFNAMSIZ = 16


class _Ifmap(ctypes.Structure):
    _fields_ = [("mem_start", ctypes.c_ulong), ("mem_end", ctypes.c_ulong),
                ("base_addr", ctypes.c_ushort), ("irq", ctypes.c_ubyte),
                ("dma", ctypes.c_ubyte), ("port", ctypes.c_ubyte)]


class _IfreqUnion(ctypes.Union):
    """The ifr_ifru union: its largest member, struct ifmap, holds two longs."""

    _fields_ = [("ifru_addr", ctypes.c_ubyte * 16), ("ifru_map", _Ifmap), ("ifru_data", ctypes.c_void_p)]


IFREQ_SIZE = IFNAMSIZ + ctypes.sizeof(_IfreqUnion)
"""sizeof(struct ifreq) for this process: 40 with 64-bit longs and pointers, 32 otherwise (o32, n32)."""
IFR_FLAGS = struct.Struct("=H")
"""NATIVE short ifr_flags at offset IFNAMSIZ, read unsigned so that IFF_TUN_EXCL (0x8000) fits."""


def ifreq(name: str, flags: int = 0) -> bytearray:
    """A struct ifreq buffer for `name`, with ifr_flags set; the kernel writes its answers into it."""
    raw = os.fsencode(name)
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise ValueError(f"not an interface name: {name!r}")
    buf = bytearray(IFREQ_SIZE)
    buf[:len(raw)] = raw
    IFR_FLAGS.pack_into(buf, IFNAMSIZ, flags)
    return buf


def ifreq_flags(buf: bytes | bytearray) -> int:
    """The ifr_flags of an ifreq buffer (e.g. after SIOCGIFFLAGS)."""
    return IFR_FLAGS.unpack_from(buf, IFNAMSIZ)[0]
