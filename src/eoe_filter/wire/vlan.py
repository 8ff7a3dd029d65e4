"""802.1Q tags on the wire view: the DHCP relay's VID mapping, and putting back a tag the kernel lifted.

The DHCP VLAN is the OAM VLAN minus one. The mapping is a bijection on VIDs
1..4093 (OAM 1 <-> DHCP 4093); VIDs 0, 4094 and 4095 are never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable

TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
TPID_OFFSET = 12
TCI_OFFSET = 14
TAG_LEN = 4
VID_MASK = 0x0FFF
UNMAPPED_VIDS = frozenset({0, 0xFFE, 0xFFF})

ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
DHCP_CLIENT_PORT = 68
_IP = TCI_OFFSET + 4  # IPv4 header behind one tag


def oam_to_dhcp_vid(vid: int) -> int:
    """net -> service: VID - 1, with 1 wrapping to 4093."""
    if vid in UNMAPPED_VIDS:
        return vid
    return 0xFFD if vid == 1 else vid - 1


def dhcp_to_oam_vid(vid: int) -> int:
    """service -> net: VID + 1, with 4093 wrapping to 1."""
    if vid in UNMAPPED_VIDS:
        return vid
    return 1 if vid == 0xFFD else vid + 1


VidMap = Callable[[int], int]


def rewrite_vid_into(buf: bytearray | memoryview, start: int, vid_map: VidMap) -> None:
    """Map the VID of the wire-view frame at buf[start:] in place; PCP, DEI and non-0x8100 tags untouched."""
    if buf[start + TPID_OFFSET] << 8 | buf[start + TPID_OFFSET + 1] != TPID_8021Q:
        return
    at = start + TCI_OFFSET
    tci = buf[at] << 8 | buf[at + 1]
    tci = tci & ~VID_MASK | vid_map(tci & VID_MASK)
    buf[at] = tci >> 8
    buf[at + 1] = tci & 0xFF


def rewrite_vid(frame: bytes | bytearray | memoryview, vid_map: VidMap) -> bytes:
    """The frame with its VID mapped (a copy); untagged or short frames come back unchanged."""
    out = bytearray(frame)
    if len(out) >= TCI_OFFSET + 2:
        rewrite_vid_into(out, 0, vid_map)
    return bytes(out)


def restore_tag_into(buf: bytearray, start: int, tpid: int, tci: int) -> int:
    """Re-insert a tag the kernel moved into packet metadata; return the new start.

    The frame received at buf[start:] lost its tag; the 4 bytes before
    `start` must be free. Moving the 12 address bytes back by 4 is cheaper
    than moving the payload forward.
    """
    head = start - TAG_LEN
    buf[head:head + TPID_OFFSET] = buf[start:start + TPID_OFFSET]
    buf[head + TPID_OFFSET] = tpid >> 8
    buf[head + TPID_OFFSET + 1] = tpid & 0xFF
    buf[head + TCI_OFFSET] = tci >> 8
    buf[head + TCI_OFFSET + 1] = tci & 0xFF
    return head


def is_dhcp_client_frame(frame: bytes | bytearray | memoryview) -> bool:
    """The DHCP relay's `-F` rule on the wire view.

    802.1Q tag with a VID other than 4094, IPv4, UDP, fragment offset 0 (a
    first fragment passes, as in the original), UDP destination port 68
    found behind the real IP header length.
    """
    n = len(frame)
    if n < _IP + 20:
        return False
    if frame[TPID_OFFSET] << 8 | frame[TPID_OFFSET + 1] != TPID_8021Q:
        return False
    if (frame[TCI_OFFSET] << 8 | frame[TCI_OFFSET + 1]) & VID_MASK == 0xFFE:
        return False
    if frame[16] << 8 | frame[17] != ETHERTYPE_IPV4 or frame[_IP + 9] != IPPROTO_UDP:
        return False
    if (frame[_IP + 6] << 8 | frame[_IP + 7]) & 0x1FFF:
        return False
    port = _IP + (frame[_IP] & 0x0F) * 4 + 2
    return n >= port + 2 and (frame[port] << 8 | frame[port + 1]) == DHCP_CLIENT_PORT
