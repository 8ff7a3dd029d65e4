"""Per-direction counters in shared memory: written by one forwarding loop, read by anyone.

The slots live in an anonymous shared mapping so that a loop running in a
worker process (the fast datapath) updates the very numbers the control
process reports. A slot is a native 64-bit integer, written by one writer:
with several workers per direction (`--workers`) each worker writes its own
block and readers add the blocks up.
"""

from __future__ import annotations

import mmap

from .wire.drops import DropReason

_FRAMES, _BYTES, _FIRST_DROP = 0, 1, 2
_SLOTS = _FIRST_DROP + max(DropReason) + 1


class DirectionCounters:
    """Written through `_slots` (one writer); read as the sum of `_slots` and the workers' blocks."""

    def __init__(self, name: str, slots: memoryview, others: tuple[memoryview, ...] = ()) -> None:
        self.name = name
        self._slots = slots
        self._blocks = (slots, *others)
        self.uncounted: frozenset[DropReason] = frozenset()
        """Reasons whose drops happen where we cannot count them (a classic BPF filter in the kernel)."""

    def _sum(self, slot: int) -> int:
        return sum(block[slot] for block in self._blocks)

    @property
    def frames(self) -> int:
        return self._sum(_FRAMES)

    @property
    def bytes(self) -> int:
        return self._sum(_BYTES)

    def add(self, frames: int, nbytes: int) -> None:
        self._slots[_FRAMES] += frames
        self._slots[_BYTES] += nbytes

    def drop(self, reason: DropReason, n: int = 1) -> None:
        self._slots[_FIRST_DROP + reason] += n

    def dropped(self, reason: DropReason) -> int:
        return self._sum(_FIRST_DROP + reason)

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": {r.name.lower(): (None if r in self.uncounted else self.dropped(r)) for r in DropReason},
        }


class Counters:
    """Both directions of one forwarder, in one shared mapping made before any worker forks.

    `net_to_service` and `service_to_net` are the totals, written by the
    control process and a single worker per direction; with `workers` > 1,
    worker k writes `workers_counters[k]` instead, a block of its own.
    """

    def __init__(self, workers: int = 1) -> None:
        blocks = 1 + (workers if workers > 1 else 0)
        self._map = mmap.mmap(-1, blocks * 2 * _SLOTS * 8)
        slots = memoryview(self._map).cast("Q")
        pairs = [(slots[2 * b * _SLOTS:(2 * b + 1) * _SLOTS], slots[(2 * b + 1) * _SLOTS:(2 * b + 2) * _SLOTS])
                 for b in range(blocks)]
        self.net_to_service = DirectionCounters("net to service", pairs[0][0], tuple(p[0] for p in pairs[1:]))
        self.service_to_net = DirectionCounters("service to net", pairs[0][1], tuple(p[1] for p in pairs[1:]))
        self.workers_counters = [(DirectionCounters("net to service", n), DirectionCounters("service to net", s))
                                 for n, s in pairs[1:]]

    @property
    def directions(self) -> tuple[DirectionCounters, DirectionCounters]:
        return self.net_to_service, self.service_to_net

    def render(self) -> str:
        """One readable block for SIGUSR1 and the exit summary (a line per worker with `--workers`)."""
        lines = ["counters:"]
        for d in self.directions:
            lines.append(f"  {d.name}: {d.frames} frames, {d.bytes} bytes forwarded")
            dropped = [f"{r.label} {d.dropped(r)}" for r in DropReason if d.dropped(r) and r not in d.uncounted]
            uncounted = [f"{r.label} not counted (kernel filter)" for r in sorted(d.uncounted)]
            lines.append("    dropped: " + (", ".join(dropped + uncounted) or "none"))
        for k, (down, up) in enumerate(self.workers_counters):
            lines.append(f"  worker {k}: net to service {down.frames} frames, service to net {up.frames} frames")
        return "\n".join(lines)
