"""`eoe_filter cleanup`: undo what forwarders killed without cleaning up left in this namespace.

A later start does the same for its own interface; this is for an
operator who does not mean to start one again.
"""

from __future__ import annotations

import argparse

from .link.netif import IFF_NOARP, NetIf
from .state import StateStore


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="eoe_filter cleanup", description=__doc__.splitlines()[0]).parse_args(argv)
    store = StateStore()
    interfaces = store.interfaces()
    if not interfaces:
        print("nothing to clean up in this network namespace")
    with NetIf() as netif:
        for name in interfaces:
            state = store.load(name)
            if state is None:
                store.remove(name)
                continue
            if state.owner_alive():
                print(f"{name}: eoe_filter pid {state.pid} is running; left alone")
                continue
            link = netif.lookup(name)
            if link is not None and not state.noarp_before and link.flags & IFF_NOARP:
                netif.set_flag(link.index, IFF_NOARP, False)
                print(f"{name}: ARP resolution restored (left disabled by eoe_filter pid {state.pid})")
            else:
                print(f"{name}: nothing to restore (left by eoe_filter pid {state.pid})")
            store.remove(name)
    return 0
