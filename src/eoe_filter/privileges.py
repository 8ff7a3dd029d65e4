"""Least privilege: check what we hold, and drop to an unprivileged user keeping only what we need.

After the sockets and the TAP are open, the forwarder needs CAP_NET_ADMIN
(interface flags, MTU, re-creating a deleted TAP) and CAP_NET_RAW
(re-binding its raw socket), and the eBPF datapath CAP_BPF (loading its
programs again for a re-created interface), nothing else. Dropping happens
once the datapath is chosen and before it starts any thread or worker
process, so every one of them inherits the reduced set.
"""

from __future__ import annotations

import ctypes
import os
import pwd

CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_BPF = 39
CAP_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW", CAP_BPF: "CAP_BPF"}

_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):  # NATIVE struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):  # NATIVE struct __user_cap_data_struct (two of them: caps 0-31, 32-63)
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing(needed: set[int]) -> list[str]:
    """Names of the needed capabilities this process does not have in effect."""
    have = effective_capabilities()
    return [CAP_NAMES.get(c, f"capability {c}") for c in sorted(needed) if not have >> c & 1]


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def drop_to(user: str, keep: set[int]) -> None:
    """Become `user`, with exactly `keep` as effective and permitted capabilities, and no way back."""
    entry = pwd.getpwnam(user)
    for cap in range(_last_cap() + 1):  # the bounding set first: it takes CAP_SETPCAP, which we still have
        if cap not in keep:
            _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping the capability bounding set")
    _check(_libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    mask = sum(1 << c for c in keep)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                          _CapData(mask >> 32, mask >> 32, 0))
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(_libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "PR_SET_KEEPCAPS")
