"""What a relay is: how it opens its service side, its kernel filter, and its edit per direction.

The forwarder knows nothing relay-specific: it opens the network side,
asks the relay for the rest, and moves frames through the relay's edits.
An edit works in place on a buffer with headroom and returns the new
(start, end) of the frame, or the reason to drop it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from ..config import Options
from ..link.bpf_classic import Program
from ..link.netif import Link, NetIf
from ..link.packet_socket import PacketSocket
from ..wire.accept import AcceptRule
from ..wire.drops import DropReason

Edit = tuple[int, int] | DropReason


class Unavailable(Exception):
    """Something the relay needs is not there: exit 69 (EX_UNAVAILABLE), nothing changed yet."""


class Port(Protocol):
    """One side of the forwarder, as the forwarding loops use it."""

    def fileno(self) -> int: ...
    def receive_into(self, buf: bytearray, rx: memoryview, at: int) -> tuple[int, int]: ...
    def send(self, frame: memoryview) -> None: ...
    def gone(self) -> str | None: ...
    def close(self) -> None: ...


@dataclass
class Context:
    """What a relay's set-up may use: the options, netlink, the log, the network link."""

    options: Options
    netif: NetIf
    log: logging.Logger
    network: Link


class Relay(ABC):
    name: ClassVar[str]
    banner: ClassVar[tuple[str, ...]]
    """The original's first start-up lines for this relay."""
    promiscuous_noarp: ClassVar[bool]
    """The network interface goes promiscuous and NOARP while we run."""
    capabilities: ClassVar[frozenset[int]]
    """What this relay needs to run, and keeps after dropping to --user."""
    service_headroom: ClassVar[int] = 0
    """Free bytes the service -> net edit needs before the frame."""
    header_cut: tuple[int, int] | None = None
    """(n, shortest) when net_to_service does nothing but cut the first n bytes off a wire frame of at
    least `shortest` bytes (a shorter one is a runt). A datapath that receives frames with their 802.1Q
    tag lifted into metadata may then cut n - 4 bytes instead of putting the tag back first."""

    def __init__(self, options: Options) -> None:
        self.options = options
        rule = AcceptRule(options.accept_dmac, options.accept_vid)
        if rule:  # shadow the method only when asked: no cost per frame otherwise
            edit = self.net_to_service

            def guarded(buf: bytearray, start: int, end: int) -> Edit:
                if not rule.accepts(memoryview(buf)[start:end]):
                    return DropReason.FILTERED
                return edit(buf, start, end)

            self.net_to_service = guarded  # type: ignore[method-assign]
            self.header_cut = None  # the rule reads the frame

    def startup_warnings(self) -> list[str]:
        """What the operator should know about this configuration before frames flow."""
        return []

    @abstractmethod
    def preflight(self, netif: NetIf) -> None:
        """Check what the service side needs before anything is created; raise Unavailable."""

    @abstractmethod
    def classic_filter(self) -> Program:
        """The `-F` program for the network socket."""

    @abstractmethod
    def open_service(self, ctx: Context) -> Port:
        """Open (and if needed create and bring up) the service side, logging as the original did."""

    def reopen_service(self, ctx: Context, port: Port) -> Port:
        """Get the service side back after it vanished (raise Unavailable while it cannot be)."""
        self.release_service(port)
        return self.open_service(ctx)

    def follow_network_mtu(self, ctx: Context) -> int | None:
        """Adapt the service side to the network interface's new MTU; the MTU set, if any."""
        return None

    def release_service(self, port: Port) -> None:
        """Undo what open_service set up, at exit."""
        port.close()

    @abstractmethod
    def net_to_service(self, buf: bytearray, start: int, end: int) -> Edit: ...

    @abstractmethod
    def service_to_net(self, buf: bytearray, start: int, end: int) -> Edit: ...


def open_raw_side(log: logging.Logger, link: Link, program: Program | None, qdisc_bypass: bool,
                  before_bind: Callable[[PacketSocket], None] | None = None) -> PacketSocket:
    """A raw socket on `link`, logged as the original did; `before_bind` runs between its lines."""
    log.info("creating the socket for %s", link.name)
    sock = PacketSocket(program)
    if qdisc_bypass:
        sock.bypass_qdisc()
    log.info("The socket for %s is %d", link.name, sock.fileno())
    if before_bind is not None:
        before_bind(sock)
    log.info("Getting interface index of %s", link.name)
    log.info("Binding socket %d to %s", sock.fileno(), link.name)
    sock.bind(link.name, link.index)
    return sock


RELAYS: dict[str, type[Relay]] = {}


def register(cls: type[Relay]) -> type[Relay]:
    RELAYS[cls.name] = cls
    return cls
