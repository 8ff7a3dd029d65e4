"""The interfaces around the programs: link state for the programs, the segmenter veth pair, ethtool bits.

The programs cannot see whether an interface is up, and a redirect to a
down one is dropped silently; userspace saw that as a send error and
counted it. `LinkWatch` follows rtnetlink link events so that the control
plane can keep the programs' "links" map current and notice deletions.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import zlib
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..link import abi
from ..link.netif import IFF_NOARP, IFF_UP

RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLMSGHDR = struct.Struct("=IHHII")
"""NATIVE struct nlmsghdr: len, type, flags, seq, pid."""
IFINFOMSG = struct.Struct("=BxHiII")
"""NATIVE struct ifinfomsg: family, pad, type, index, flags, change."""

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17


@dataclass(frozen=True, slots=True)
class LinkEvent:
    index: int
    up: bool
    deleted: bool


class LinkWatch:
    """An rtnetlink socket subscribed to link changes; read it when poll() says it is readable."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def events(self) -> list[LinkEvent]:
        """Everything queued now. After an overflow (ENOBUFS) the caller must re-read the state itself."""
        found: list[LinkEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return found
            at = 0
            while at + NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = NLMSGHDR.unpack_from(data, at)
                if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSGHDR.size + IFINFOMSG.size:
                    _, _, index, flags, _ = IFINFOMSG.unpack_from(data, at + NLMSGHDR.size)
                    found.append(LinkEvent(index, bool(flags & IFF_UP), kind == RTM_DELLINK))
                at += (length + 3) & ~3 or len(data)


def _ethtool(ifname: str, cmd: int, data: int = 0) -> int:
    """One struct ethtool_value (NATIVE u32 cmd, u32 data) request through SIOCETHTOOL."""
    value = ctypes.create_string_buffer(struct.pack("=II", cmd, data), 8)
    req = abi.ifreq(ifname)
    struct.pack_into("@P", req, abi.IFNAMSIZ, ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, req)
    return struct.unpack("=II", value.raw)[1]


SEGMENTER_PREFIX = "eoes"
"""The names of a segmenter pair's ends: this, a CRC-32 of the TAP's name, then a or b."""
SEGMENTER_ALIAS = "eoe_filter segmenter for "
"""The alias of a segmenter pair's ends, followed by the service interface it serves."""


class Segmenter:
    """A veth pair that finishes what tc egress sees unfinished: GSO super-frames and partial checksums.

    Its near end has no transmit checksum offload (and so no segmentation
    offload): the kernel segments and checksums every frame sent into it in
    software, as it would have before handing them to the TAP's reader. The
    far end's tc ingress program encapsulates the finished frames. The pair
    is named after the service interface, so a restart after a crash finds
    and replaces the one a killed run left behind.
    """

    def __init__(self, ipr: IPRoute, service: str) -> None:
        tag = f"{zlib.crc32(service.encode()):08x}"
        self.ipr = ipr
        self.near, self.far = f"{SEGMENTER_PREFIX}{tag}a", f"{SEGMENTER_PREFIX}{tag}b"
        self.alias = SEGMENTER_ALIAS + service
        self.near_index = self.far_index = 0

    def create(self) -> bool:
        """Make the pair (replacing a stale one); True when a stale pair was replaced."""
        stale = self._remove()
        self.ipr.link("add", ifname=self.near, kind="veth", peer={"ifname": self.far})
        self.near_index = self.ipr.link_lookup(ifname=self.near)[0]
        self.far_index = self.ipr.link_lookup(ifname=self.far)[0]
        for index, name in ((self.near_index, self.near), (self.far_index, self.far)):
            _disable_ipv6(name)
            self.ipr.link("set", index=index, ifalias=self.alias, mtu=65535, flags=IFF_NOARP, change=IFF_NOARP)
        _ethtool(self.near, ETHTOOL_STXCSUM, 0)
        for index in (self.near_index, self.far_index):
            self.ipr.link("set", index=index, state="up")
        return stale

    def close(self) -> None:
        self._remove()

    def _remove(self) -> bool:
        found = self.ipr.link_lookup(ifname=self.near)
        if not found:
            return False
        try:
            self.ipr.link("del", index=found[0])  # takes the peer with it
        except NetlinkError:
            return False
        return True


def _disable_ipv6(ifname: str) -> None:
    """No router solicitations or MLD reports of the pair's own: it carries only our frames."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write("1")
