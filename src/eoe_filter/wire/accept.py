"""Opt-in acceptance on the network side: which destination MACs and VIDs may reach the service side.

Without it, anyone on the wire can inject frames into the board's stack
through the TAP. A frame that fails the rule is a counted FILTERED drop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .vlan import TCI_OFFSET, TPID_8021Q, TPID_OFFSET, VID_MASK


@dataclass(frozen=True)
class AcceptRule:
    dmacs: frozenset[bytes] = frozenset()
    """Accepted destination MACs (wire bytes 0-5); empty: any."""
    vids: frozenset[int] = frozenset()
    """Accepted VIDs of the outer 802.1Q tag; empty: any (untagged frames included)."""

    def __bool__(self) -> bool:
        return bool(self.dmacs or self.vids)

    def accepts(self, frame: bytes | bytearray | memoryview) -> bool:
        if len(frame) < TCI_OFFSET + 2:
            return False
        if self.dmacs and bytes(frame[:6]) not in self.dmacs:
            return False
        if self.vids:
            if frame[TPID_OFFSET] << 8 | frame[TPID_OFFSET + 1] != TPID_8021Q:
                return False
            return (frame[TCI_OFFSET] << 8 | frame[TCI_OFFSET + 1]) & VID_MASK in self.vids
        return True
