"""The TAP device behind /dev/net/tun: created or attached, never left half-made.

Interface control (up, MTU) goes through netlink, never through the tun
file descriptor, which does not take interface ioctls.

A multi-queue TAP (IFF_MULTI_QUEUE, for `--workers`) has a file descriptor
per queue, each attached with TUNSETIFF on the same name. The kernel picks
the queue of a frame the host sends (tun_select_queue). By default it
steers a flow to the queue that last wrote a frame of the flow's reverse
direction, else by flow hash, and forgets a queue after 3 s without such a
frame: a flow can move between queues mid-stream, and frames still queued
on the old one can then be overtaken. A steering program (TUNSETSTEERINGEBPF)
replaces that choice with a fixed function of the frame's flow.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field

from . import abi, bpf_classic
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
    more: list[int] = field(default_factory=list)
    """The file descriptors of queues 1.. of a multi-queue TAP; `fd` is queue 0."""

    def fileno(self) -> int:
        return self.fd

    def queue(self, k: int) -> Tap:
        """Queue k as a port of its own, for the worker that serves it; closing stays with this Tap."""
        return Tap(self.name, (self.fd, *self.more)[k], self.created)

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
        for fd in self.more:
            os.close(fd)
        self.more = []
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


def attach_queues(tap: Tap, fds: list[int]) -> None:
    """Attach `fds` (fresh clone fds, or those of a device deleted under us) as the other queues of
    multi-queue `tap`; they become its own, to close, once attached."""
    for fd in fds:
        attach(fd, tap.name, existed=True, multi_queue=True)
        tap.more.append(fd)


def _why(name: str, err: int | None) -> str:
    if err == errno.EBUSY:
        return (f"TAP {name} is already attached to another process "
                "(another forwarder still running?); refusing to share it")
    if err == errno.EINVAL:
        return f"{name} exists with flags that do not fit a single-queue TAP (multi-queue? not a TAP?)"
    if err == errno.EPERM:
        return f"not allowed to attach TAP {name}: CAP_NET_ADMIN is needed"
    return f"cannot attach TAP {name}: {os.strerror(err or 0)}"


def load_steering(queues: int) -> int:
    """The eBPF steering program that keeps each flow on one of `queues` queues (bpf_classic's flow hash);
    its fd. Needs CAP_BPF (or CAP_SYS_ADMIN); raises OSError when refused."""
    from ..ebpf import syscall
    from ..ebpf.asm import encode
    from ..ebpf.classic import translate
    code = encode(translate(bpf_classic.tap_steering_program(queues)))
    return syscall.load_program(syscall.PROG_TYPE_SOCKET_FILTER, code, "eoe_tap_queue")


def set_steering(tap: Tap, program: int) -> None:
    """TUNSETSTEERINGEBPF: `program` picks the queue of every frame the host sends to the TAP (Linux 4.19).

    It stays with the device, so a re-created TAP needs it again; the
    program fd is enough for that, without CAP_BPF.
    """
    fcntl.ioctl(tap.fd, ABI.TUNSETSTEERINGEBPF, struct.pack("=i", program))
