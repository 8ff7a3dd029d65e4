"""Kernel ABI numbers per architecture, against values computed by hand from the uapi headers (no privileges).

Hand computation: _IOC(dir, 'T'=0x54, nr, 4) = dir << dirshift | 4 << 16 | 0x5400 | nr.
Generic: dirshift 30, WRITE 1, READ 2 -> _IOW 0x4004_54nn, _IOR 0x8004_54nn.
MIPS/PowerPC/SPARC: dirshift 29, WRITE 4, READ 2 -> _IOW 0x8004_54nn, _IOR 0x4004_54nn.
(Cross-checked: the x86_64 values against this machine's <linux/if_tun.h> compiled
with gcc, the PowerPC ones against the Rust libc crate's table.)
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys

import pytest

from eoe_filter.link import abi
from eoe_filter.link.abi import ABI, abi_for

GENERIC = {"TUNSETIFF": 0x400454CA, "TUNSETPERSIST": 0x400454CB, "TUNSETOWNER": 0x400454CC,
           "TUNSETGROUP": 0x400454CE, "TUNGETFEATURES": 0x800454CF, "TUNSETOFFLOAD": 0x400454D0,
           "TUNGETIFF": 0x800454D2, "TUNSETVNETHDRSZ": 0x400454D8, "TUNSETQUEUE": 0x400454D9,
           "TUNSETSTEERINGEBPF": 0x800454E0, "TUNSETFILTEREBPF": 0x800454E1}
OSF = {"TUNSETIFF": 0x800454CA, "TUNSETPERSIST": 0x800454CB, "TUNSETOWNER": 0x800454CC,
       "TUNSETGROUP": 0x800454CE, "TUNGETFEATURES": 0x400454CF, "TUNSETOFFLOAD": 0x800454D0,
       "TUNGETIFF": 0x400454D2, "TUNSETVNETHDRSZ": 0x800454D8, "TUNSETQUEUE": 0x800454D9,
       "TUNSETSTEERINGEBPF": 0x400454E0, "TUNSETFILTEREBPF": 0x400454E1}


@pytest.mark.parametrize(("machine", "expected"), [
    ("x86_64", GENERIC), ("aarch64", GENERIC), ("riscv64", GENERIC), ("armv7l", GENERIC), ("i686", GENERIC),
    ("mips", OSF), ("mips64", OSF), ("ppc64", OSF), ("ppc64le", OSF), ("sparc64", OSF),
    ("parisc", OSF),  # parisc: generic widths, READ and WRITE swapped -> the same numbers as OSF here
])
def test_tun_ioctls(machine, expected):
    got = abi_for(machine)
    assert {name: getattr(got, name) for name in expected} == expected


def test_io_without_argument_differs_too():
    """_IO('T', 227) (TUNGETDEVNETNS): MIPS sets a NONE direction bit."""
    assert abi_for("x86_64").ioc.io("T", 227) == 0x000054E3
    assert abi_for("mips64").ioc.io("T", 227) == 0x200054E3


def test_argument_size_must_fit():
    with pytest.raises(ValueError):
        abi.OSF_IOC.iow("T", 1, 1 << 13)
    assert abi.GENERIC_IOC.iow("T", 1, (1 << 14) - 1) == 0x7FFF5401


SOCKOPT_NAMES = ("SOL_SOCKET", "SO_SNDBUF", "SO_RCVBUF", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE", "SO_ATTACH_FILTER",
                 "SO_DETACH_FILTER", "SO_ATTACH_BPF", "SO_DETACH_BPF", "SO_LOCK_FILTER", "SO_BUSY_POLL")
GENERIC_SO = (1, 7, 8, 32, 33, 26, 27, 50, 27, 44, 46)


@pytest.mark.parametrize(("machine", "expected"), [
    ("x86_64", GENERIC_SO), ("aarch64", GENERIC_SO), ("riscv64", GENERIC_SO), ("armv7l", GENERIC_SO),
    ("ppc64", GENERIC_SO), ("ppc64le", GENERIC_SO), ("s390x", GENERIC_SO),
    ("mips", (0xFFFF, 0x1001, 0x1002, 31, 33, 26, 27, 50, 27, 44, 46)),
    ("mips64", (0xFFFF, 0x1001, 0x1002, 31, 33, 26, 27, 50, 27, 44, 46)),
    ("alpha", (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 26, 27, 50, 27, 44, 46)),
    ("sparc64", (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 0x1A, 0x1B, 0x34, 0x1B, 0x28, 0x30)),
    ("parisc", (0xFFFF, 0x1001, 0x1002, 0x100A, 0x100B, 0x401A, 0x401B, 0x402B, 0x401B, 0x4025, 0x4027)),
])
def test_socket_options(machine, expected):
    got = abi_for(machine)
    assert tuple(getattr(got, name) for name in SOCKOPT_NAMES) == expected


@pytest.mark.parametrize("machine", ["", "x86-64", "mips64el-unknown", "m68k", "MIPS64"])
def test_unknown_machine_is_refused_by_name(machine):
    with pytest.raises(ValueError, match=repr(machine)):
        abi_for(machine)


def test_running_machine_agrees_with_pythons_socket_module():
    assert ABI.machine == os.uname().machine
    ours = {name: getattr(ABI, name) for name in SOCKOPT_NAMES}
    ours.update(SOL_PACKET=abi.SOL_PACKET, ETH_P_ALL=abi.ETH_P_ALL,
                **{name: getattr(abi, name) for name in dir(abi)
                   if name.startswith(("PACKET_", "SIOC", "IFF_", "TP_STATUS_"))})
    shared = {name: value for name, value in ours.items() if hasattr(socket, name)}
    assert {"SOL_SOCKET", "SO_SNDBUF", "SO_RCVBUF"} <= shared.keys()
    assert shared == {name: getattr(socket, name) for name in shared}


def test_constants_that_do_not_vary():
    assert (abi.SOL_PACKET, abi.ETH_P_ALL) == (263, 3)
    assert (abi.PACKET_ADD_MEMBERSHIP, abi.PACKET_DROP_MEMBERSHIP, abi.PACKET_MR_PROMISC) == (1, 2, 1)
    assert (abi.PACKET_RX_RING, abi.PACKET_STATISTICS, abi.PACKET_AUXDATA, abi.PACKET_VERSION) == (5, 6, 8, 10)
    assert (abi.PACKET_TX_RING, abi.PACKET_LOSS, abi.PACKET_FANOUT) == (13, 14, 18)
    assert (abi.PACKET_QDISC_BYPASS, abi.PACKET_IGNORE_OUTGOING) == (20, 23)
    assert (abi.TP_STATUS_VLAN_VALID, abi.TP_STATUS_VLAN_TPID_VALID) == (0x10, 0x40)
    assert (abi.SIOCGIFFLAGS, abi.SIOCSIFFLAGS, abi.SIOCGIFINDEX) == (0x8913, 0x8914, 0x8933)
    assert (abi.SIOCGIFMTU, abi.SIOCSIFMTU, abi.SIOCGIFHWADDR) == (0x8921, 0x8922, 0x8927)
    assert (abi.IFF_TAP, abi.IFF_NO_PI, abi.IFF_MULTI_QUEUE, abi.IFF_VNET_HDR, abi.IFF_TUN_EXCL) == (
        0x0002, 0x1000, 0x0100, 0x4000, 0x8000)


def test_native_structure_sizes_match_c():
    assert abi.TPACKET_AUXDATA.size == 20
    assert abi.TPACKET_STATS.size == 8
    assert abi.PACKET_MREQ.size == 16
    assert abi.IFREQ_SIZE == (40 if ctypes.sizeof(ctypes.c_void_p) == 8 else 32)


def test_native_structures_use_native_byte_order():
    assert abi.TPACKET_AUXDATA.pack(1, 0, 0, 0, 0, 0, 0)[:4] == (1).to_bytes(4, sys.byteorder)
    buf = abi.ifreq("eth0", abi.IFF_TAP | abi.IFF_NO_PI | abi.IFF_TUN_EXCL)
    assert len(buf) == abi.IFREQ_SIZE and buf[:5] == b"eth0\0"
    assert buf[16:18] == struct.pack("=H", 0x9002)
    assert abi.ifreq_flags(buf) == 0x9002


@pytest.mark.parametrize("name", ["", "x" * 16, "a\0b"])
def test_ifreq_refuses_bad_names(name):
    with pytest.raises(ValueError):
        abi.ifreq(name)


def test_ifreq_against_the_running_kernel():
    """SIOCGIFFLAGS and SIOCGIFINDEX on lo through an ordinary socket: layout and numbers are right."""
    flags, index = abi.ifreq("lo"), abi.ifreq("lo")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, abi.SIOCGIFFLAGS, flags)  # a bytearray is filled in place
        fcntl.ioctl(sock, abi.SIOCGIFINDEX, index)
    assert abi.ifreq_flags(flags) & abi.IFF_UP
    assert struct.unpack_from("=i", index, abi.IFNAMSIZ)[0] == socket.if_nametoindex("lo")


def test_tungetfeatures_against_the_running_kernel():
    """A wrong TUNGETFEATURES number is refused with ENOTTY (or EINVAL); no device is created."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as err:
        pytest.skip(f"/dev/net/tun: {err.strerror}")
    try:
        features = struct.unpack("=I", fcntl.ioctl(fd, ABI.TUNGETFEATURES, bytes(4)))[0]
        with pytest.raises(OSError) as wrong:
            other = OSF if ABI.ioc == abi.GENERIC_IOC else GENERIC
            fcntl.ioctl(fd, other["TUNGETFEATURES"], bytes(4))
        assert wrong.value.errno in (errno.ENOTTY, errno.EINVAL, errno.EBADFD)
    finally:
        os.close(fd)
    assert features & (abi.IFF_TAP | abi.IFF_NO_PI | abi.IFF_MULTI_QUEUE) == (
        abi.IFF_TAP | abi.IFF_NO_PI | abi.IFF_MULTI_QUEUE)
