"""Relay "dhcp" (`-V`): DHCP frames between the OAM VLAN and the DHCP VLAN (= OAM - 1)."""

from __future__ import annotations

from ..link.bpf_classic import Program, dhcp_client_filter
from ..link.netif import NetIf
from ..link.packet_socket import PacketSocket
from ..privileges import CAP_NET_RAW
from ..wire.vlan import TCI_OFFSET, dhcp_to_oam_vid, oam_to_dhcp_vid, rewrite_vid_into
from .base import Context, Edit, Relay, Unavailable, open_raw_side, register

_TAGGED = TCI_OFFSET + 2


@register
class DhcpRelay(Relay):
    name = "dhcp"
    banner = ("Enable dummy dhcp vlan.", "register DHCP relay done")
    promiscuous_noarp = False
    capabilities = frozenset({CAP_NET_RAW})

    def startup_warnings(self) -> list[str]:
        if self.options.filter:
            return []
        return [f"without -F every frame is relayed both ways between {self.options.network} and "
                f"{self.options.service} (broadcast traffic can loop)"]

    def preflight(self, netif: NetIf) -> None:
        if netif.lookup(self.options.service) is None:
            raise Unavailable(f"service interface {self.options.service} does not exist")

    def classic_filter(self) -> Program:
        return dhcp_client_filter()

    def open_service(self, ctx: Context) -> PacketSocket:
        link = ctx.netif.lookup(self.options.service)
        if link is None:
            raise Unavailable(f"service interface {self.options.service} does not exist")
        return open_raw_side(ctx.log, link, None, self.options.qdisc_bypass)

    def net_to_service(self, buf: bytearray, start: int, end: int) -> Edit:
        if end - start >= _TAGGED:
            rewrite_vid_into(buf, start, oam_to_dhcp_vid)
        return start, end

    def service_to_net(self, buf: bytearray, start: int, end: int) -> Edit:
        if end - start >= _TAGGED:
            rewrite_vid_into(buf, start, dhcp_to_oam_vid)
        return start, end
