"""sendmmsg() through ctypes: a burst of frames handed to a packet socket in one system call.

The message and iovec arrays are built once; per frame the caller writes
only an iovec's base and length, through `iov` (native size_t words:
iov[2 * i] is the base of frame i, iov[2 * i + 1] its length; void * and
size_t have the same width on every Linux ABI).

Structures are kernel ABI (struct mmsghdr around the kernel's user_msghdr,
whose msg_iovlen and msg_controllen are __kernel_size_t): native layout via
ctypes, never a wire format.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Final

_libc = ctypes.CDLL(None, use_errno=True)


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int

if ctypes.sizeof(ctypes.c_void_p) != ctypes.sizeof(ctypes.c_size_t):
    raise ImportError("an iovec is not two equal words on this ABI")
IOV_WORD: Final = "P"
"""memoryview format of a pointer, and so of a size_t."""


class SendBatch:
    """Room for `capacity` single-iovec messages to a bound socket (no address: the bound interface)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._msgs = (Mmsghdr * capacity)()
        self._iovs = (Iovec * capacity)()
        for i in range(capacity):
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iovs[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self.iov = memoryview(self._iovs).cast("B").cast(IOV_WORD)
        self._base = ctypes.addressof(self._msgs)
        self._size = ctypes.sizeof(Mmsghdr)

    def send(self, fd: int, first: int, count: int) -> int:
        """Send messages first..first+count-1; return how many went, or -errno if the first one failed."""
        while True:
            n = _sendmmsg(fd, self._base + first * self._size, count, 0)
            if n > 0:
                return n
            err = ctypes.get_errno() or errno.EIO
            if err != errno.EINTR:
                return -err
