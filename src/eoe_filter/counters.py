"""Per-direction counters in shared memory: written by one forwarding loop, read by anyone.

The slots live in an anonymous shared mapping so that a loop running in a
worker process (the fast datapath) updates the very numbers the control
process reports. A slot is a native 64-bit integer, written by one writer.
"""

from __future__ import annotations

import mmap

from .wire.drops import DropReason

_FRAMES, _BYTES, _FIRST_DROP = 0, 1, 2
_SLOTS = _FIRST_DROP + max(DropReason) + 1


class DirectionCounters:
    def __init__(self, name: str, slots: memoryview) -> None:
        self.name = name
        self._slots = slots
        self.uncounted: frozenset[DropReason] = frozenset()
        """Reasons whose drops happen where we cannot count them (a classic BPF filter in the kernel)."""

    @property
    def frames(self) -> int:
        return self._slots[_FRAMES]

    @property
    def bytes(self) -> int:
        return self._slots[_BYTES]

    def add(self, frames: int, nbytes: int) -> None:
        self._slots[_FRAMES] += frames
        self._slots[_BYTES] += nbytes

    def drop(self, reason: DropReason, n: int = 1) -> None:
        self._slots[_FIRST_DROP + reason] += n

    def dropped(self, reason: DropReason) -> int:
        return self._slots[_FIRST_DROP + reason]

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": {r.name.lower(): (None if r in self.uncounted else self.dropped(r)) for r in DropReason},
        }


class Counters:
    """Both directions of one forwarder, in one shared mapping made before any worker forks."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 2 * _SLOTS * 8)
        slots = memoryview(self._map).cast("Q")
        self.net_to_service = DirectionCounters("net to service", slots[:_SLOTS])
        self.service_to_net = DirectionCounters("service to net", slots[_SLOTS:])

    @property
    def directions(self) -> tuple[DirectionCounters, DirectionCounters]:
        return self.net_to_service, self.service_to_net

    def render(self) -> str:
        """One readable block for SIGUSR1 and the exit summary."""
        lines = ["counters:"]
        for d in self.directions:
            lines.append(f"  {d.name}: {d.frames} frames, {d.bytes} bytes forwarded")
            dropped = [f"{r.label} {d.dropped(r)}" for r in DropReason if d.dropped(r) and r not in d.uncounted]
            uncounted = [f"{r.label} not counted (kernel filter)" for r in sorted(d.uncounted)]
            lines.append("    dropped: " + (", ".join(dropped + uncounted) or "none"))
        return "\n".join(lines)
