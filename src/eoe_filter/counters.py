"""Per-direction counters: each written by one forwarding loop only, read by anyone."""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire.drops import DropReason


@dataclass
class DirectionCounters:
    name: str
    frames: int = 0
    bytes: int = 0
    drops: list[int] = field(default_factory=lambda: [0] * (max(DropReason) + 1))
    uncounted: frozenset[DropReason] = frozenset()
    """Reasons whose drops happen where we cannot count them (a classic BPF filter in the kernel)."""

    def drop(self, reason: DropReason, n: int = 1) -> None:
        self.drops[reason] += n

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "drops": {r.name.lower(): (None if r in self.uncounted else self.drops[r]) for r in DropReason},
        }


def render(directions: list[DirectionCounters]) -> str:
    """One readable block for SIGUSR1 and the exit summary."""
    lines = ["counters:"]
    for d in directions:
        lines.append(f"  {d.name}: {d.frames} frames, {d.bytes} bytes forwarded")
        dropped = [f"{r.label} {d.drops[r]}" for r in DropReason if d.drops[r] and r not in d.uncounted]
        uncounted = [f"{r.label} not counted (kernel filter)" for r in DropReason if r in d.uncounted]
        lines.append("    dropped: " + (", ".join(dropped + uncounted) if dropped or uncounted else "none"))
    return "\n".join(lines)
