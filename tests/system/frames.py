"""EOE frames built with scapy, independently of the forwarder's own codec."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

BOARD_MAC = "06:00:00:00:00:78"
SWITCH_MAC = "06:00:00:00:00:f8"


def inner_frame(size: int, seed: int = 0, ethertype: int = 0x0800) -> bytes:
    """An inner Ethernet frame of exactly `size` bytes with recognisable contents."""
    head = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=ethertype))
    body = bytes((seed + i) & 0xFF for i in range(size - len(head)))
    return head + body


def eoe_frame(inner: bytes, op_code: int = 1, downstream: int = 1, vid: int = 4094, pcp: int = 0,
              dst: str = BOARD_MAC, src: str = SWITCH_MAC, itf: int = 0, protocol_id: int = 0,
              flag: int = 0) -> bytes:
    """An EOE frame as the switch sends it (downstream by default), padding included."""
    padded = inner + bytes(max(0, 64 - len(inner)))
    control = struct.pack("!BHB", op_code << 4 | downstream << 3 | flag, itf, protocol_id)
    return bytes(Ether(dst=dst, src=src) / Dot1Q(prio=pcp, vlan=vid, type=len(padded) + 4)
                 / Raw(control + padded))


def dhcp_offer(vid: int, pcp: int = 0, dport: int = 68) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:67") / Dot1Q(prio=pcp, vlan=vid)
                 / IP(src="192.0.2.1", dst="255.255.255.255") / UDP(sport=67, dport=dport) / Raw(b"x" * 40))
