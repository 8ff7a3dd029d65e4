"""Relay "eoe" (`-E`): a TAP on the service side, the EOE header stripped and added."""

from __future__ import annotations

import os

from ..config import Options
from ..link.bpf_classic import Program, eoe_downstream_filter
from ..link.netif import NetIf
from ..link.tap import TUN_CLONE_DEVICE, Tap, TapError, attach, open_clone
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
        super().__init__(options)
        self._template = options.header.pack(0)

    def preflight(self, netif: NetIf) -> None:
        if not os.path.exists(TUN_CLONE_DEVICE):
            raise Unavailable(f"{TUN_CLONE_DEVICE} does not exist (load the tun module: modprobe tun)")
        existing = netif.lookup(self.options.service)
        if existing is None:
            return
        if existing.tun_type != 2:
            raise Unavailable(f"{self.options.service} exists and is not a TAP device")
        if existing.tun_multi_queue:
            raise Unavailable(f"TAP {self.options.service} is multi-queue; a single-queue TAP is needed")

    def classic_filter(self) -> Program:
        return eoe_downstream_filter()

    def open_service(self, ctx: Context) -> Tap:
        log, name = ctx.log, self.options.service
        existed = ctx.netif.lookup(name) is not None
        log.info("Opening clone device %s", TUN_CLONE_DEVICE)
        fd = open_clone()
        log.info("Socket of tap interface %s is %d", name, fd)
        log.info("Attaching socket %d to tap interface %s", fd, name)
        try:
            tap = self._attach(ctx, fd, existed)
        except BaseException:
            os.close(fd)
            raise
        log.info("Tap interface %s is successfully created", name)
        return tap

    def reopen_service(self, ctx: Context, port: Port) -> Tap:
        """The same fd again: a tun file whose device was deleted can attach anew, and unlike
        /dev/net/tun (often mode 0600) it needs no privilege beyond CAP_NET_ADMIN to do so."""
        assert isinstance(port, Tap)
        if port.gone() is None:  # still attached: only the datapath needed restarting
            return port
        return self._attach(ctx, port.fd, existed=False)

    def _attach(self, ctx: Context, fd: int, existed: bool) -> Tap:
        """Attach, make persistent if asked, set the MTU, bring up: a TAP that is down fails every write."""
        name = self.options.service
        tap = attach(fd, name, existed=existed)
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
