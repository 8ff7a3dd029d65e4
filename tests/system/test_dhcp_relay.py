"""The dhcp relay: VID rewrite both ways on two raw interfaces, its filter, no promiscuity."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from eoe_filter.lab import Lab

from .conftest import Forwarder, raw_socket, receive, receive_all, start_forwarder
from .frames import dhcp_offer


@dataclass
class DhcpLab:
    lab: Lab
    ns: str

    def start(self, *args: str) -> Forwarder:
        return start_forwarder(self.lab, self.ns, "-n", "oam0", "-t", "svc0", "-V", *args)


@pytest.fixture
def dhcp_lab(lab: Lab) -> Iterator[DhcpLab]:
    ns = lab.netns("dhcp")
    lab.veth(ns, "oam0", ns, "oampeer")
    lab.veth(ns, "svc0", ns, "svcpeer")
    yield DhcpLab(lab, ns)


def vid_of(frame: bytes) -> int:
    assert frame[12:14] == b"\x81\x00"
    return struct.unpack("!H", frame[14:16])[0] & 0xFFF


def test_startup_lines_and_loop_warning(dhcp_lab: DhcpLab):
    fwd = dhcp_lab.start()
    assert fwd.lines[:4] == ["Starting forwarder application: eoe_filter", "Enable dummy dhcp vlan.",
                             "register DHCP relay done", "Argument are: netItf: oam0, serviceItf: svc0"]
    assert any("every frame is relayed both ways" in e for e in fwd.errors)
    link = json.loads(dhcp_lab.lab.run(dhcp_lab.ns, ["ip", "-j", "-d", "link", "show", "oam0"]).stdout)[0]
    assert "NOARP" not in link["flags"] and link.get("promiscuity", 0) == 0


@pytest.mark.parametrize(("oam", "dhcp"), [(100, 99), (1, 4093), (0, 0), (4094, 4094), (4095, 4095)])
def test_rewrites_both_ways(dhcp_lab: DhcpLab, oam: int, dhcp: int):
    dhcp_lab.start()
    oampeer, svcpeer = raw_socket(dhcp_lab.ns, "oampeer"), raw_socket(dhcp_lab.ns, "svcpeer")
    with oampeer, svcpeer:
        oampeer.send(dhcp_offer(oam, pcp=5))
        down = receive(svcpeer)
        assert down is not None and vid_of(down) == dhcp
        assert down[14] >> 5 == 5
        assert down[16:] == dhcp_offer(oam, pcp=5)[16:]
        svcpeer.send(dhcp_offer(dhcp, pcp=3))
        up = receive(oampeer)
        assert up is not None and vid_of(up) == oam and up[14] >> 5 == 3


def test_filter_lets_only_dhcp_client_frames_in(dhcp_lab: DhcpLab):
    dhcp_lab.start("-F")
    oampeer, svcpeer = raw_socket(dhcp_lab.ns, "oampeer"), raw_socket(dhcp_lab.ns, "svcpeer")
    with oampeer, svcpeer:
        oampeer.send(dhcp_offer(100, dport=67))
        oampeer.send(dhcp_offer(4094))
        oampeer.send(dhcp_offer(200))
        got = receive_all(svcpeer)
        assert [vid_of(f) for f in got] == [199]
