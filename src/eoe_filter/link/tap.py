"""The TAP device behind /dev/net/tun: created or attached, never left half-made.

Interface control (up, MTU) goes through netlink, never through the tun
file descriptor, which does not take interface ioctls.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from . import abi
from .abi import ABI

TUN_CLONE_DEVICE = "/dev/net/tun"


class TapError(Exception):
    """A TAP that cannot be used; the message is one line for the operator."""


@dataclass(slots=True)
class Tap:
    name: str
    fd: int
    created: bool
    """We made the device (so it goes away at exit unless persistent)."""

    def fileno(self) -> int:
        return self.fd

    def receive_into(self, buf: bytearray, rx: memoryview, at: int) -> tuple[int, int]:
        """Read one frame into rx (= buf[at:]); raises BlockingIOError when none is queued."""
        return at, at + os.readv(self.fd, (rx,))

    def send(self, frame: memoryview) -> None:
        os.write(self.fd, frame)

    def gone(self) -> str | None:
        """Why the device is unusable for good (deleted under us), else None."""
        try:
            fcntl.ioctl(self.fd, ABI.TUNGETIFF, abi.ifreq(self.name, 0))
        except OSError as e:
            if e.errno == errno.EBADFD:
                return f"TAP {self.name} was deleted"
        return None

    def set_persist(self, on: bool) -> None:
        fcntl.ioctl(self.fd, ABI.TUNSETPERSIST, int(on))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_clone() -> int:
    try:
        return os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise TapError(f"cannot open {TUN_CLONE_DEVICE}: {e.strerror}") from None


def attach(fd: int, name: str, *, existed: bool, multi_queue: bool = False) -> Tap:
    """Attach the clone fd to (or create) TAP `name`, without packet information headers."""
    flags = abi.IFF_TAP | abi.IFF_NO_PI | (abi.IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fcntl.ioctl(fd, ABI.TUNSETIFF, abi.ifreq(name, flags))
    except OSError as e:
        raise TapError(_why(name, e.errno)) from None
    return Tap(name=name, fd=fd, created=not existed)


def _why(name: str, err: int | None) -> str:
    if err == errno.EBUSY:
        return (f"TAP {name} is already attached to another process "
                "(another forwarder still running?); refusing to share it")
    if err == errno.EINVAL:
        return f"{name} exists with flags that do not fit a single-queue TAP (multi-queue? not a TAP?)"
    if err == errno.EPERM:
        return f"not allowed to attach TAP {name}: CAP_NET_ADMIN is needed"
    return f"cannot attach TAP {name}: {os.strerror(err or 0)}"
