"""Forwarding loops: they move frames between two ports through a relay's edits, and nothing else.

A datapath is chosen by name (`--datapath`); each is built from the same
DatapathContext and offers start() and stop().
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..counters import Counters
from ..link.packet_socket import PacketSocket
from ..relays.base import Port, Relay
from ..wire.eoe import BUFFER_SIZE


@dataclass
class DatapathContext:
    net: PacketSocket
    service: Port
    relay: Relay
    counters: Counters
    on_fatal: Callable[[str], None]
    """Called (from any thread) with a one-line reason when the service cannot go on."""
    log: logging.Logger
    debug: int
    choice: str = ""
    """Why `auto` chose what it chose (filled in by auto; shown by `stats`)."""


class Datapath(Protocol):
    name: str
    capabilities: frozenset[int]
    """What it needs to go on under --user, beyond the relay's: the forwarder keeps these too."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool:
        """Every forwarding loop still runs (what the systemd watchdog vouches for)."""
        ...


def log_creating(ctx: DatapathContext) -> None:
    """The original's lines before its threads start (a userspace datapath says them)."""
    ctx.log.info("creating thread service to net")
    ctx.log.info("net_fd is %d and service_fd is %d", ctx.net.fileno(), ctx.service.fileno())


def log_waiting(ctx: DatapathContext) -> None:
    """The original's last start-up lines, once both directions run."""
    net, service = ctx.net.fileno(), ctx.service.fileno()
    ctx.log.info("net to service thread is waiting for data on %d to transmit on %d. Buffer size is %d",
                 net, service, BUFFER_SIZE)
    ctx.log.info("service to net thread is waiting for data on %d to transmit on %d. Buffer size is %d",
                 service, net, BUFFER_SIZE)


def datapaths() -> dict[str, Callable[[DatapathContext], Datapath]]:
    from .ebpf import EbpfDatapath
    from .fast import FastDatapath
    from .simple import SimpleDatapath
    return {"simple": SimpleDatapath, "fast": FastDatapath, "ebpf": EbpfDatapath, "auto": auto}


def auto(ctx: DatapathContext) -> Datapath:
    """The kernel datapath where the kernel and the options allow it, else the fast userspace one.

    The choice and its reason are logged: one line naming what is missing.
    """
    from ..relays.base import Unavailable
    from .ebpf import EbpfDatapath
    from .fast import FastDatapath
    try:
        chosen: Datapath = EbpfDatapath(ctx, lossless=True)
    except Unavailable as e:
        ctx.choice = f"fast, because {e}"
        ctx.log.info("datapath auto: %s", ctx.choice)
        return FastDatapath(ctx)
    ctx.choice = "ebpf, because the kernel took every program"
    ctx.log.info("datapath auto: %s", ctx.choice)
    return chosen
