"""What processes and CPUs did, read from /proc: the benchmarks' CPU, memory and scheduling figures.

A forwarder is a process tree (the fast datapath forks workers), and part of
its work runs in softirq, charged to whatever it interrupts or to ksoftirqd;
these readers take whole trees and named kernel threads so that the callers
can tell the forwarder's cost from other load. Processes that exit while
being read count as nothing.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from the state field on (the command name may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the fast datapath's workers)."""
    children: dict[int, list[int]] = {}
    for child in _pids():
        try:
            children.setdefault(int(_stat(child)[1]), []).append(child)
        except (OSError, IndexError):
            continue
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def pin(pids: Iterable[int], cpus: Collection[int]) -> None:
    """Pin every thread of the processes: threads do not inherit a later change of their process's affinity."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system time of the processes, all their threads."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / HZ


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the processes (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def schedstat(pids: Iterable[int]) -> tuple[float, float]:
    """Seconds the processes' threads ran, and were runnable but not running (/proc/PID/task/TID/schedstat)."""
    ran = waited = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue
            ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def ksoftirqd() -> dict[int, int]:
    """CPU -> PID of its softirq thread: where the kernel's share of forwarding goes when it has too much at once."""
    found = {}
    for pid in _pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name.startswith("ksoftirqd/"):
            found[int(name.split("/", 1)[1])] = pid
    return found


def core_times(cpu: int) -> tuple[float, float]:
    """Seconds `cpu` was busy since boot: (with anything, with processes: user, nice, system, steal) (/proc/stat).

    The first tells a saturated core also where the kernel forwards in
    softirq; the second, minus the forwarder's own CPU time and its softirq
    thread's, is what other processes (and the hypervisor) took from the
    forwarder's core: on a shared machine it tells a forwarder that could
    not get its core from one that had nothing to do.
    """
    with open("/proc/stat") as stat:
        for line in stat:
            name, *ticks = line.split()
            if name == f"cpu{cpu}":
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(t) for t in ticks[:8])
                return (user + nice + system + irq + softirq + steal) / HZ, (user + nice + system + steal) / HZ
    raise RuntimeError(f"cpu{cpu} is not in /proc/stat")


def _softnet(column: int) -> int:
    with open("/proc/net/softnet_stat") as stat:
        return sum(int(line.split()[column], 16) for line in stat)


def backlog() -> int:
    """Frames waiting in every CPU's network backlog for softirq processing (/proc/net/softnet_stat)."""
    return _softnet(11)


def backlog_drops() -> int:
    """Frames dropped so far because a CPU's network backlog was full (machine-wide: /proc/net/softnet_stat)."""
    return _softnet(1)
