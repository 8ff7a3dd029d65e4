"""The bpf() system call through ctypes: load programs (verifier log on failure), maps, links, queries.

glibc has no bpf() wrapper, so the call goes through syscall(2) with the
running architecture's number. Every `union bpf_attr` variant is a NATIVE
ctypes structure with its padding spelled out, so that 64-bit fields sit
where the kernel expects them on 32-bit userlands too (i386 and MIPS o32
would otherwise align them to 4 bytes).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from functools import cache

# Commands, program, map and attach types (linux/bpf.h; kernel ABI, stable).
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM = 0, 1, 2
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_ENABLE_STATS = 32

PROG_TYPE_SOCKET_FILTER = 1
PROG_TYPE_SCHED_CLS = 3
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
ATTACH_TCX_INGRESS = 46
ATTACH_TCX_EGRESS = 47
F_STRICT_ALIGNMENT = 1 << 0
OBJ_NAME_LEN = 16

LICENSE = b"Dual MIT/GPL"
"""The project's MIT licence, in the form the kernel counts as GPL-compatible."""
LOG_SIZE = 1 << 22

_NR_BPF = {
    "x86_64": 321, "i386": 357, "i486": 357, "i586": 357, "i686": 357,
    "aarch64": 280, "aarch64_be": 280, "riscv64": 280, "riscv32": 280, "loongarch64": 280,
    "ppc": 361, "ppc64": 361, "ppc64le": 361, "s390x": 351,
}
_MIPS_NR_BPF = {"o32": 4355, "n32": 6319, "n64": 5315}
_EF_MIPS_ABI2 = 0x20  # ELF e_flags bit of the n32 ABI


class BpfError(OSError):
    """A refused bpf() call; `log` holds the verifier's explanation for a refused program."""

    def __init__(self, err: int, what: str, log: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.what = what
        self.log = log

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-12:])
        return f"{self.what}: {self.strerror}" + (f"\nverifier log (end):\n{tail}" if tail else "")


def _mips_abi() -> str:
    """o32, n32 or n64: the userland ABI picks the syscall table, and only the ELF header tells n32 from o32."""
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        return "n64"
    with open("/proc/self/exe", "rb") as f:
        head = f.read(40)
    order = "<" if head[5] == 1 else ">"
    (flags,) = struct.unpack_from(order + "I", head, 36)  # e_flags of an ELF32 header
    return "n32" if flags & _EF_MIPS_ABI2 else "o32"


@cache
def _nr_bpf() -> int:
    machine = os.uname().machine
    if machine.startswith("mips"):
        return _MIPS_NR_BPF[_mips_abi()]
    if machine.startswith("arm"):
        return 386
    if machine not in _NR_BPF:
        raise BpfError(errno.ENOSYS, f"bpf() system call number unknown for machine {machine}")
    return _NR_BPF[machine]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


PROG_LOAD_TRIES = 5
"""The verifier gives up with EAGAIN when a signal arrives meanwhile; the load is tried again (as libbpf does)."""


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """One bpf() call (a program load: up to PROG_LOAD_TRIES); raises BpfError naming `what` was attempted."""
    for _ in range(PROG_LOAD_TRIES if cmd == BPF_PROG_LOAD else 1):
        result = _libc.syscall(ctypes.c_long(_nr_bpf()), ctypes.c_long(cmd), ctypes.byref(attr),
                               ctypes.c_long(ctypes.sizeof(attr)))
        if result >= 0:
            return result
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise BpfError(err, what)


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * OBJ_NAME_LEN), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _MapCreate(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("numa_node", ctypes.c_uint32),
                ("map_name", ctypes.c_char * OBJ_NAME_LEN)]


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64)]


class _ProgQuery(ctypes.Structure):
    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("prog_attach_flags", ctypes.c_uint64), ("link_ids", ctypes.c_uint64),
                ("link_attach_flags", ctypes.c_uint64), ("revision", ctypes.c_uint64)]


class _GetFdById(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _InfoByFd(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to its run-time statistics: the kernel fills what fits."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * OBJ_NAME_LEN), ("ifindex", ctypes.c_uint32),
                ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
                ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
                ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
                ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64)]


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise ValueError(f"BPF object name {name!r}: up to 15 characters of [A-Za-z0-9_.]")
    return raw


def load_program(prog_type: int, code: bytes, name: str, *, flags: int = 0) -> int:
    """Load encoded instructions; on refusal, load again with a log buffer to say why.

    The first attempt runs without a log (faster, no 4 MiB buffer); the
    verifier is deterministic, so the second attempt fails the same way.
    """
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(LICENSE)
    attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ctypes.addressof(insns),
                     license=ctypes.addressof(license_), prog_flags=flags, prog_name=_name(name))
    try:
        return bpf(BPF_PROG_LOAD, attr, f"loading eBPF program {name}")
    except BpfError as e:
        if e.errno not in (errno.EACCES, errno.EINVAL, errno.E2BIG, errno.ENOSPC):
            raise
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, LOG_SIZE, ctypes.addressof(log)
    try:
        fd = bpf(BPF_PROG_LOAD, attr, f"loading eBPF program {name}")
    except BpfError as e:
        raise BpfError(e.errno or errno.EINVAL, e.what, log.value.decode(errors="replace")) from None
    return fd


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    attr = _MapCreate(map_type=map_type, key_size=key_size, value_size=value_size,
                      max_entries=max_entries, map_name=_name(name))
    return bpf(BPF_MAP_CREATE, attr, f"creating eBPF map {name}")


def lookup(map_fd: int, key: int, value_size: int) -> bytes:
    """The value at u32 `key`: for a per-CPU map, one 8-byte-aligned slot per possible CPU, end to end."""
    k = ctypes.c_uint32(key)
    value = ctypes.create_string_buffer(value_size)
    bpf(BPF_MAP_LOOKUP_ELEM, _MapElem(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(value)),
        "reading an eBPF map")
    return value.raw


def update(map_fd: int, key: int, value: bytes) -> None:
    k = ctypes.c_uint32(key)
    v = ctypes.create_string_buffer(value, len(value))
    bpf(BPF_MAP_UPDATE_ELEM, _MapElem(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)),
        "writing an eBPF map")


def create_link(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """A BPF link: the program stays attached while the returned descriptor is open, and not a moment longer."""
    attr = _LinkCreate(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type)
    return bpf(BPF_LINK_CREATE, attr, "attaching an eBPF program")


def query_programs(ifindex: int, attach_type: int) -> list[int]:
    """IDs of the programs attached at (ifindex, attach_type) through the multi-program API (tcx)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _ProgQuery(target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(ids),
                      prog_cnt=len(ids))
    bpf(BPF_PROG_QUERY, attr, "listing attached eBPF programs")
    return list(ids[:attr.prog_cnt])


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    id: int
    name: str
    type: int
    run_time_ns: int
    """Time spent in the program, helpers included, while statistics were enabled (enable_stats)."""
    run_count: int


def program_info(fd: int) -> ProgramInfo:
    info = _ProgInfo()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
        "reading eBPF program information")
    return ProgramInfo(info.id, info.name.decode(errors="replace"), info.type, info.run_time_ns, info.run_cnt)


def program_ids() -> list[int]:
    """Every program loaded in the system, by ID."""
    ids, attr = [], _GetFdById()
    while True:
        try:
            bpf(BPF_PROG_GET_NEXT_ID, attr, "listing eBPF programs")
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return ids
            raise
        ids.append(attr.next_id)
        attr.id = attr.next_id


class _EnableStats(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


def enable_stats() -> int:
    """Make the kernel time every program run while the returned descriptor is open (BPF_STATS_RUN_TIME)."""
    return bpf(BPF_ENABLE_STATS, _EnableStats(0), "enabling eBPF run-time statistics")


def program_info_by_id(prog_id: int) -> ProgramInfo:
    fd = bpf(BPF_PROG_GET_FD_BY_ID, _GetFdById(id=prog_id), f"opening eBPF program {prog_id}")
    try:
        return program_info(fd)
    finally:
        os.close(fd)


@cache
def possible_cpus() -> int:
    """How many slots a per-CPU map value has: every possible CPU, online or not."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    count = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count
