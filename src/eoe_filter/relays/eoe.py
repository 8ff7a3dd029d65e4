"""Relay "eoe" (`-E`): a TAP on the service side, the EOE header stripped and added."""

from __future__ import annotations

import os

from ..config import Options
from ..link.bpf_classic import Program, eoe_downstream_filter
from ..link.netif import NetIf
from ..link.tap import (
    TUN_CLONE_DEVICE,
    Tap,
    TapError,
    attach,
    attach_queues,
    load_steering,
    open_clone,
    set_steering,
)
from ..privileges import CAP_NET_ADMIN, CAP_NET_RAW
from ..wire.drops import DropReason
from ..wire.eoe import HEADER_LEN, MIN_FRAME, MIN_INNER, encapsulate_into
from .base import Context, Edit, Port, Relay, Unavailable, register

NET_TO_TAP_MTU = 18
"""The TAP MTU is the network MTU minus the 18 bytes of the header's tagged Ethernet part."""
MAX_TAP_MTU = 65521
"""The tun driver's max_mtu (65535 - ETH_HLEN): it refuses anything larger with EINVAL."""


TAP_TX_QUEUE = 10000
"""Frames the TAP queues for us (default 1000, ~50 ms at 20 k/s): rides out a busy CPU's scheduling gaps."""


def tap_mtu_for(network_mtu: int) -> int:
    return max(68, min(MAX_TAP_MTU, network_mtu - NET_TO_TAP_MTU))


@register
class EoeRelay(Relay):
    name = "eoe"
    banner = ("Enable EOE header handle.", "register EOE relay done")
    promiscuous_noarp = True
    capabilities = frozenset({CAP_NET_ADMIN, CAP_NET_RAW})
    service_headroom = HEADER_LEN

    def __init__(self, options: Options) -> None:
        self.header_cut = (HEADER_LEN, MIN_FRAME)  # net_to_service below; the accept rule may take it back
        super().__init__(options)
        self._template = options.header.pack(0)
        self._steering: int | None = None
        """The TAP's queue steering program (--workers), loaded once, attached to every TAP we re-create;
        -1 when the kernel refused it."""

    def preflight(self, netif: NetIf) -> None:
        if not os.path.exists(TUN_CLONE_DEVICE):
            raise Unavailable(f"{TUN_CLONE_DEVICE} does not exist (load the tun module: modprobe tun)")
        existing = netif.lookup(self.options.service)
        if existing is None:
            return
        if existing.tun_type != 2:
            raise Unavailable(f"{self.options.service} exists and is not a TAP device")
        workers = self.options.workers
        if existing.tun_multi_queue and workers == 1:
            raise Unavailable(f"TAP {self.options.service} is multi-queue; a single-queue TAP is needed")
        if not existing.tun_multi_queue and workers > 1:
            raise Unavailable(f"TAP {self.options.service} is single-queue; --workers {workers} needs a "
                              "multi-queue TAP (ip tuntap add ... mode tap multi_queue), or none")

    def classic_filter(self) -> Program:
        return eoe_downstream_filter()

    def open_service(self, ctx: Context) -> Tap:
        log, name = ctx.log, self.options.service
        existed = ctx.netif.lookup(name) is not None
        log.info("Opening clone device %s", TUN_CLONE_DEVICE)
        fd = open_clone()
        log.info("Socket of tap interface %s is %d", name, fd)
        log.info("Attaching socket %d to tap interface %s", fd, name)
        more: list[int] = []
        try:
            more.extend(open_clone() for _ in range(self.options.workers - 1))
            tap = self._attach(ctx, fd, existed, more)
        except BaseException:
            for queue in (fd, *more):
                os.close(queue)
            raise
        log.info("Tap interface %s is successfully created", name)
        return tap

    def reopen_service(self, ctx: Context, port: Port) -> Tap:
        """The same fd again: a tun file whose device was deleted can attach anew, and unlike
        /dev/net/tun (often mode 0600) it needs no privilege beyond CAP_NET_ADMIN to do so."""
        assert isinstance(port, Tap)
        if port.gone() is None:  # still attached: only the datapath needed restarting
            return port
        return self._attach(ctx, port.fd, False, port.more)

    def _attach(self, ctx: Context, fd: int, existed: bool, more: list[int]) -> Tap:
        """Attach (every queue's fd: `fd`, then `more`), make persistent if asked, set the MTU, bring up:
        a TAP that is down fails every write."""
        name = self.options.service
        tap = attach(fd, name, existed=existed, multi_queue=bool(more))
        attach_queues(tap, more)
        if more:
            self._steer(ctx, tap)
        if self.options.persist:
            tap.set_persist(True)
        link = ctx.netif.lookup(name)
        if link is None:
            raise TapError(f"TAP {name} vanished while being set up")
        mtu = self._tap_mtu(ctx)
        ctx.netif.set_mtu(link.index, mtu)
        ctx.netif.set_tx_queue(link.index, TAP_TX_QUEUE)
        ctx.netif.set_up(link.index)
        ctx.log.debug("%s %s, up, MTU %d%s", "attached to existing TAP" if existed else "created TAP",
                      name, mtu, ", persistent" if self.options.persist else "")
        return tap

    def _steer(self, ctx: Context, tap: Tap) -> None:
        """Keep each flow the host sends on one queue; without the program, say what the kernel does instead."""
        try:
            if self._steering is None:
                self._steering = -1
                self._steering = load_steering(self.options.workers)
            if self._steering >= 0:
                set_steering(tap, self._steering)
        except OSError as e:
            ctx.log.warning("TAP %s: no queue steering program (%s): the kernel picks queues itself, and a flow "
                            "from the host may be reordered when its replies move it to another worker",
                            tap.name, e.strerror or e)

    def release_service(self, port: Port) -> None:
        super().release_service(port)
        if self._steering is not None and self._steering >= 0:
            os.close(self._steering)
        self._steering = None

    def _tap_mtu(self, ctx: Context) -> int:
        return self.options.tap_mtu or tap_mtu_for(ctx.network.mtu)

    def follow_network_mtu(self, ctx: Context) -> int | None:
        link = ctx.netif.lookup(self.options.service)
        if self.options.tap_mtu is not None or link is None:
            return None
        mtu = self._tap_mtu(ctx)
        ctx.netif.set_mtu(link.index, mtu)
        return mtu

    def net_to_service(self, buf: bytearray, start: int, end: int) -> Edit:
        if end - start < MIN_FRAME:
            return DropReason.RUNT
        return start + HEADER_LEN, end

    def service_to_net(self, buf: bytearray, start: int, end: int) -> Edit:
        head = encapsulate_into(buf, start, end, self._template)
        if head < 0:
            return DropReason.TOO_BIG
        return head, max(end, start + MIN_INNER)
