"""Scapy layer for the EOE frame (wire-format.md section 1), for crafting and reading captures.

Usage::

    from scapy.all import IP, UDP, Ether, rdpcap, wrpcap
    from eoe_filter.contrib.scapy_eoe import EOE
    frame = EOE(vlan=100, op_code=1, downstream=1) / Ether() / IP() / UDP()
    raw = bytes(frame)          # inner frame zero-padded to 64 bytes, len computed
    Ether(raw)                  # -> <EOE ... |<Ether ...>>
    wrpcap("eoe.pcap", [frame]); rdpcap("eoe.pcap")  # written as Ethernet, read back as EOE

Importing this module patches ``Ether.dispatch_hook`` so that ``Ether(raw)``
(and therefore ``rdpcap`` of an Ethernet capture) returns an ``EOE``
packet for frames that satisfy :func:`is_eoe_frame`; every other frame,
802.1Q frames with a real EtherType included, decodes exactly as before.
This module needs scapy, an optional tool/test dependency; the forwarder
never imports it.
"""

from __future__ import annotations

import struct
from typing import Any

from scapy.config import conf
from scapy.data import DLT_EN10MB
from scapy.fields import BitEnumField, BitField, MACField, ShortField, XByteField, XShortField
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

__all__ = ["EOE", "OP_CODES", "is_eoe_frame", "itf_from_pon_gem"]

HEADER_LEN = 22
TAG_LEN = 18  # bytes up to and including the length field
MIN_INNER_LEN = 64  # the forwarder zero-pads shorter inner frames to this
MAX_LENGTH_FIELD = 0xFFFF
_ETH_MIN_FRAME = 60  # Ethernet minimum frame without FCS: may carry padding
_LLC_IN_VLAN = (b"\xaa\xaa\x03", b"\x42\x42\x03")  # SNAP (PVST+), STP

OP_CODES = {1: "downstream from switch", 8: "A2A switch"}


def is_eoe_frame(raw: bytes) -> bool:
    """Tell an EOE frame from other 802.1Q traffic, with the same rule as eoe.lua.

    EOE is shaped like an 802.1Q-tagged 802.3 frame, so the only evidence is
    a length field that matches the frame: TPID 0x8100, length >= 18 (4
    control bytes + an inner Ethernet header) and equal to len(raw) - 18,
    or smaller when the frame is at most 60 bytes (Ethernet minimum-size
    padding). SNAP and STP LLC headers in that position are real 802.3
    frames (PVST+/STP BPDUs), not EOE.
    """
    if len(raw) < HEADER_LEN + 14 or raw[12:14] != b"\x81\x00":
        return False
    length = struct.unpack_from("!H", raw, 16)[0]
    after = len(raw) - TAG_LEN
    if length < 4 + 14:
        return False
    if length != after and not (length < after and len(raw) <= _ETH_MIN_FRAME):
        return False
    return raw[18:21] not in _LLC_IN_VLAN


def itf_from_pon_gem(pon: int, gem_port: int) -> int:
    """Build the itf field from its pon (bits 15-12) / gem_port (bits 11-0) reading."""
    if not 0 <= pon <= 0xF or not 0 <= gem_port <= 0xFFF:
        raise ValueError(f"pon {pon} / gem_port {gem_port} out of range (4 / 12 bits)")
    return pon << 12 | gem_port


class EOE(Packet):
    """The 22-byte EOE header; its payload is the inner Ethernet frame.

    ``len`` is computed on build (4 + inner length) unless set, and an inner
    frame shorter than 64 bytes is zero-padded to 64 first, as the forwarder
    does on encapsulation, so built frames are what the board sends.
    """

    name = "EOE"
    fields_desc = [
        MACField("dst", "06:00:00:00:00:f8"),
        MACField("src", "06:00:00:00:00:78"),
        XShortField("tpid", 0x8100),
        BitField("prio", 0, 3),
        BitField("dei", 0, 1),
        BitField("vlan", 4094, 12),
        ShortField("len", None),
        BitEnumField("op_code", 8, 4, OP_CODES),
        BitField("downstream", 0, 1),
        BitField("flag", 0, 3),
        XShortField("itf", 0),
        XByteField("protocol_id", 0),
    ]

    @property
    def pon(self) -> int:
        """itf read as pon (bits 15-12)."""
        return self.itf >> 12

    @property
    def gem_port(self) -> int:
        """itf read as gem_port (bits 11-0)."""
        return self.itf & 0xFFF

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        """Pad and measure the inner frame as the forwarder does; never let the length wrap."""
        if len(pay) < MIN_INNER_LEN:
            pay += b"\x00" * (MIN_INNER_LEN - len(pay))
        if self.len is None:
            length = 4 + len(pay)
            if length > MAX_LENGTH_FIELD:
                raise ValueError(
                    f"inner frame of {len(pay)} bytes exceeds the EOE maximum of "
                    f"{MAX_LENGTH_FIELD - 4}: the length field would wrap"
                )
            pkt = pkt[:16] + struct.pack("!H", length) + pkt[18:]
        return pkt + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        """Hand the inner frame to Ether; bytes past the length field are padding."""
        if self.len is None or self.len < 4:
            return s, b""
        return s[: self.len - 4], s[self.len - 4 :]


bind_layers(EOE, Ether)
# wrpcap() writes EOE packets as Ethernet; reading goes through the hook below.
conf.l2types.register_layer2num(DLT_EN10MB, EOE)

_ether_dispatch_hook = Ether.dispatch_hook.__func__  # type: ignore[attr-defined]


def _dispatch_hook(cls: type[Packet], _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
    """Let Ether(raw) decode EOE frames; everything else goes to scapy's own hook."""
    if cls is Ether and _pkt and is_eoe_frame(bytes(_pkt)):
        return EOE
    return _ether_dispatch_hook(cls, _pkt, *args, **kargs)


Ether.dispatch_hook = classmethod(_dispatch_hook)  # type: ignore[method-assign,assignment]
