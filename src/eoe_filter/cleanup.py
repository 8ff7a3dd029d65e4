"""`eoe_filter cleanup`: undo what forwarders killed without cleaning up left in this namespace.

A later start does the same for its own interface; this is for an
operator who does not mean to start one again: NOARP put back, eBPF
programs that outlive their process (attached through netlink, on kernels
without BPF links) taken off, and segmenter veth pairs removed.
"""

from __future__ import annotations

import argparse
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .control import running_services
from .ebpf.attach import Attacher, AttachError, Interface
from .ebpf.netdev import SEGMENTER_ALIAS
from .link.netif import IFF_NOARP, NetIf
from .state import StateStore


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="eoe_filter cleanup", description=__doc__.splitlines()[0]).parse_args(argv)
    store = StateStore()
    interfaces = store.interfaces()
    done = False
    with NetIf() as netif:
        for name in interfaces:
            state = store.load(name)
            if state is None:
                store.remove(name)
                continue
            if state.owner_alive():
                print(f"{name}: eoe_filter pid {state.pid} is running; left alone")
                continue
            done = True
            link = netif.lookup(name)
            if link is not None and not state.noarp_before and link.flags & IFF_NOARP:
                netif.set_flag(link.index, IFF_NOARP, False)
                print(f"{name}: ARP resolution restored (left disabled by eoe_filter pid {state.pid})")
            else:
                print(f"{name}: nothing to restore (left by eoe_filter pid {state.pid})")
            if link is not None:
                _remove_programs(Interface(link.index, name))
            store.remove(name)
    done = _remove_segmenters() or done
    if not done and not interfaces:
        print("nothing to clean up in this network namespace")
    return 0


def _remove_programs(where: Interface) -> None:
    """Programs of ours a dead forwarder left attached through netlink (links die with their process)."""
    with IPRoute() as ipr:
        try:
            removed = Attacher(ipr, logging.getLogger("eoe_filter")).remove_stale(where)
        except (AttachError, NetlinkError, OSError) as e:
            print(f"{where.name}: eBPF programs left alone: {e}")
            return
    if removed:
        print(f"{where.name}: removed {', '.join(removed)}")


def _remove_segmenters() -> bool:
    """The eBPF datapath's veth pairs whose forwarder is gone, and its programs on their (persistent)
    TAP; True when one was removed."""
    served = set(running_services())
    removed = False
    with IPRoute() as ipr:
        for link in ipr.get_links():
            alias = link.get("IFLA_IFALIAS") or ""
            service = alias[len(SEGMENTER_ALIAS):]
            if not alias.startswith(SEGMENTER_ALIAS) or service in served:
                continue
            name = link.get("IFLA_IFNAME")
            try:
                ipr.link("del", index=link["index"])  # takes its peer with it
            except NetlinkError:
                continue  # the peer of one removed just before
            print(f"{name}: removed the segmenter veth pair of {service}, whose forwarder is gone")
            removed = True
            tap = ipr.link_lookup(ifname=service)
            if tap:
                _remove_programs(Interface(tap[0], service))
    return removed
