"""Attaching tc programs to interfaces: BPF links where the kernel has them, netlink otherwise.

A BPF link (tcx, since Linux 6.6) detaches when its file descriptor
closes, so programs die with the process, SIGKILL included. Without
links, programs are attached through netlink (pyroute2) as cls_bpf filters
in direct-action mode on a clsact qdisc. Those outlive a killed process, so every start first removes what an
earlier run of ours left (programs are recognised by their name prefix) and
only then attaches: a restart replaces stale programs instead of stacking a
second copy.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import syscall as sc
from .programs import PROGRAM_PREFIX


class Hook(Enum):
    INGRESS = "tc ingress"
    EGRESS = "tc egress"


class AttachError(Exception):
    """The program cannot be attached; the message is one line for the operator."""


TC_PARENT = {Hook.INGRESS: 0xFFFF_FFF2, Hook.EGRESS: 0xFFFF_FFF3}
"""clsact's ingress and egress pseudo-classes (TC_H_CLSACT:TC_H_MIN_INGRESS / _EGRESS)."""
TCX = {Hook.INGRESS: sc.ATTACH_TCX_INGRESS, Hook.EGRESS: sc.ATTACH_TCX_EGRESS}
TC_PRIORITY = 0xE0E
TC_HANDLE = 1


@dataclass(frozen=True, slots=True)
class Interface:
    index: int
    name: str


class Attacher:
    """Attaches, remembers how, and undoes it all in reverse order on close().

    `use_links` None probes: links first, netlink when the kernel has no
    such link type; True or False forces one way (diagnostics and tests).
    """

    def __init__(self, ipr: IPRoute, log: logging.Logger, use_links: bool | None = None) -> None:
        self.ipr = ipr
        self.log = log
        self.use_links = use_links
        self.done: list[str] = []
        """One line per attached program: how and where."""
        self._undo: list[Callable[[], None]] = []
        self._clsact: set[int] = set()
        """Interfaces whose clsact qdisc we added (removed again at exit)."""

    def close(self, keep: int = 0) -> None:
        """Detach all but the first `keep` programs attached (the rest later, by a close() without it)."""
        while len(self._undo) > keep:
            undo = self._undo.pop()
            try:
                undo()
            except (OSError, NetlinkError) as e:  # the interface went away: so did its programs
                self.log.debug("detaching: %s", e)
        if keep:
            return
        for index in self._clsact:
            self._delete_clsact(index)
        self._clsact.clear()

    def attach(self, prog_fd: int, where: Interface, hook: Hook) -> None:
        how = self._tc(prog_fd, where, hook)
        self.done.append(f"{hook.value} on {where.name} ({how})")

    def _link(self, prog_fd: int, where: Interface, attach_type: int) -> int | None:
        """A BPF link, or None when links are off or this kernel has none of this type."""
        if self.use_links is False:
            return None
        try:
            fd = sc.create_link(prog_fd, where.index, attach_type)
        except sc.BpfError as e:
            if self.use_links is None and e.errno == errno.EINVAL:
                return None
            raise
        self._undo.append(lambda: os.close(fd))
        return fd

    def _tc(self, prog_fd: int, where: Interface, hook: Hook) -> str:
        try:
            if self._link(prog_fd, where, TCX[hook]) is not None:
                return "tcx BPF link"
        except sc.BpfError as e:
            raise AttachError(f"cannot attach to {hook.value} of {where.name}: {_reason(e)}") from None
        try:
            if where.index not in self._clsact and not self._has_clsact(where.index):
                self.ipr.tc("add", "clsact", where.index)
                self._clsact.add(where.index)
            self.ipr.tc("add-filter", "bpf", where.index, TC_HANDLE, fd=prog_fd, name=sc.program_info(prog_fd).name,
                        parent=TC_PARENT[hook], prio=TC_PRIORITY, direct_action=True)
        except NetlinkError as e:
            raise AttachError(f"cannot attach to {hook.value} of {where.name}: {_reason(e)}") from None
        self._undo.append(lambda: self.ipr.tc("del-filter", "bpf", where.index, parent=TC_PARENT[hook],
                                              prio=TC_PRIORITY, handle=TC_HANDLE))
        return "clsact filter, direct action, netlink"

    def _has_clsact(self, index: int) -> bool:
        return any(q.get("kind") == "clsact" for q in self.ipr.get_qdiscs(index))

    def _delete_clsact(self, index: int) -> None:
        try:
            self.ipr.tc("del", "clsact", index)
        except NetlinkError as e:
            self.log.debug("removing clsact: %s", e)

    def remove_stale(self, where: Interface) -> list[str]:
        """Remove programs of ours that an earlier run left on `where`; refuse a live forwarder's.

        Netlink-attached programs survive their process; link-attached ones
        do not, so an "eoe_" program held by a link belongs to a forwarder
        that is still running on this interface.
        """
        removed = []
        for hook in (Hook.INGRESS, Hook.EGRESS):
            for prog_id in _query(where.index, TCX[hook]):
                name = _name(prog_id)
                if name.startswith(PROGRAM_PREFIX):
                    raise AttachError(f"{where.name} already carries {name} (id {prog_id}) through a BPF link: "
                                      "another eoe_filter is forwarding on it")
        if self._has_clsact(where.index):
            emptied = True
            for hook, parent in TC_PARENT.items():
                for f in self.ipr.get_filters(where.index, parent=parent):
                    name = f.get(("options", "TCA_BPF_NAME"))
                    if f.get("kind") != "bpf" or not f["handle"]:
                        continue
                    if name and name.startswith(PROGRAM_PREFIX):
                        self.ipr.tc("del-filter", "bpf", where.index, parent=parent, prio=f["info"] >> 16,
                                    handle=f["handle"])
                        removed.append(f"{hook.value} filter {name}")
                    else:
                        emptied = False
            if removed and emptied:
                self._delete_clsact(where.index)
        return removed

def _query(index: int, attach_type: int) -> list[int]:
    try:
        return sc.query_programs(index, attach_type)
    except sc.BpfError:  # no tcx in this kernel: nothing can be attached that way
        return []


def _name(prog_id: int) -> str:
    try:
        return sc.program_info_by_id(prog_id).name
    except sc.BpfError:
        return ""


def _reason(e: Exception) -> str:
    if isinstance(e, NetlinkError):
        return os.strerror(e.code) if isinstance(e.code, int) else str(e)
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
