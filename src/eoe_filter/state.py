"""What a forwarder changed on an interface, kept on disk so that a crash cannot make it permanent.

Promiscuity is socket-scoped and the kernel drops it with the socket, but
NOARP is an interface flag: a forwarder killed with SIGKILL would leave it
set. The interface's original flag is written under /run/eoe_filter/,
keyed by network namespace (the same names exist in many namespaces); the
next start, or `eoe_filter cleanup`, puts it back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ROOT = Path("/run/eoe_filter")


def namespace_key() -> str:
    """Identifies this network namespace for as long as it exists."""
    return f"netns-{os.stat('/proc/self/ns/net').st_ino}"


@dataclass(frozen=True)
class InterfaceState:
    interface: str
    index: int
    noarp_before: bool
    pid: int

    def owner_alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return b"eoe_filter" in f.read()
        except OSError:
            return False


class StateStore:
    def __init__(self, root: Path = STATE_ROOT) -> None:
        self.dir = root / namespace_key()

    def _path(self, interface: str) -> Path:
        return self.dir / f"{interface}.json"

    def load(self, interface: str) -> InterfaceState | None:
        try:
            return InterfaceState(**json.loads(self._path(interface).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, state: InterfaceState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path(state.interface).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        tmp.replace(self._path(state.interface))

    def remove(self, interface: str) -> None:
        self._path(interface).unlink(missing_ok=True)

    def give_to(self, uid: int, gid: int) -> None:
        """Let an unprivileged forwarder (--user) keep its own records up to date."""
        if self.dir.is_dir():
            os.chown(self.dir, uid, gid)
            for path in self.dir.glob("*.json"):
                os.chown(path, uid, gid)

    def interfaces(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.dir.glob("*.json"))
        except OSError:
            return []
