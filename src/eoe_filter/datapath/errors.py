"""The error policy of the forwarding loops: which errno drops a frame, and which ends the service."""

from __future__ import annotations

import errno

from ..wire.drops import DropReason

SEND_DROPS: dict[int, DropReason] = {
    errno.EIO: DropReason.TAP_DOWN,
    errno.ENETDOWN: DropReason.NET_DOWN,
    errno.ENXIO: DropReason.NET_DOWN,
    errno.ENODEV: DropReason.NET_DOWN,
    errno.EMSGSIZE: DropReason.TOO_BIG,
    errno.ENOBUFS: DropReason.NO_BUFFERS,
    errno.EAGAIN: DropReason.NO_BUFFERS,
}
"""A send that fails with one of these costs one frame, never the process."""

MAYBE_GONE = frozenset({errno.EBADFD, errno.ENXIO, errno.ENODEV, errno.ENETDOWN})
"""After these, ask the port whether its interface still exists."""


def send_drop_reason(err: int | None) -> DropReason:
    return SEND_DROPS.get(err or 0, DropReason.OTHER)
