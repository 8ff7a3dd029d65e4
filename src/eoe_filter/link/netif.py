"""Interface control over netlink (pyroute2): look-ups, up/down, MTU, flags.

Used only by the control thread: an IPRoute socket is not shared with the
forwarding loops, which never talk netlink per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFF_UP = 0x1
IFF_NOARP = 0x80
IFF_PROMISC = 0x100


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    flags: int
    mtu: int
    kind: str | None
    carrier: bool
    tun_type: int | None
    """1 = tun, 2 = tap, for tun-driver devices."""
    tun_multi_queue: bool
    tun_persist: bool

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


class NetIf:
    """A netlink session for looking up and changing interfaces of one namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> NetIf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, name: str) -> Link | None:
        try:
            msgs = self._ipr.get_links(ifname=name)
        except NetlinkError:
            return None
        return link_from_message(msgs[0]) if msgs else None

    def by_index(self, index: int) -> Link | None:
        try:
            msgs = self._ipr.get_links(index)
        except NetlinkError:
            return None
        return link_from_message(msgs[0]) if msgs else None

    def set_up(self, index: int) -> None:
        self._ipr.link("set", index=index, state="up")

    def set_tx_queue(self, index: int, frames: int) -> None:
        self._ipr.link("set", index=index, txqlen=frames)

    def set_mtu(self, index: int, mtu: int) -> None:
        self._ipr.link("set", index=index, mtu=mtu)

    def set_flag(self, index: int, flag: int, on: bool) -> None:
        self._ipr.link("set", index=index, flags=flag if on else 0, change=flag)


def link_from_message(msg) -> Link:  # type: ignore[no-untyped-def]  # pyroute2 message
    kind = msg.get(("linkinfo", "kind"))
    tun = msg.get(("linkinfo", "data")) if kind == "tun" else None
    return Link(
        name=msg.get("ifname"),
        index=msg["index"],
        flags=msg["flags"],
        mtu=msg.get("mtu"),
        kind=kind,
        carrier=bool(msg.get("carrier")),
        tun_type=tun.get("IFLA_TUN_TYPE") if tun is not None else None,
        tun_multi_queue=bool(tun is not None and tun.get("IFLA_TUN_MULTI_QUEUE")),
        tun_persist=bool(tun is not None and tun.get("IFLA_TUN_PERSIST")),
    )
