"""Link events from netlink: how the forwarder notices interfaces going away and coming back.

A plain non-blocking netlink socket subscribed to RTMGRP_LINK, whose
datagrams pyroute2 parses: the control loop polls its fd, and events()
drains everything queued, so no event can wait unseen in a library's
buffer while the fd looks idle. Nothing in the forwarding loops polls
interface state.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .netif import Link, link_from_message

_BUFFER = 1 << 16


@dataclass(frozen=True, slots=True)
class LinkEvent:
    deleted: bool
    link: Link


class LinkMonitor:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK))
        self._marshal = MarshalRtnl()
        self.overflowed = False
        """Events were lost (ENOBUFS): the caller should look the interfaces up again."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def events(self) -> list[LinkEvent]:
        out = []
        while True:
            try:
                data = self._sock.recv(_BUFFER)
            except BlockingIOError:
                return out
            except OSError:  # ENOBUFS: the kernel dropped events for us
                self.overflowed = True
                continue
            for msg in self._marshal.parse(data):
                kind = msg.get("event")
                if kind in ("RTM_NEWLINK", "RTM_DELLINK") and msg.get("ifname"):
                    out.append(LinkEvent(deleted=kind == "RTM_DELLINK", link=link_from_message(msg)))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LinkMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
