"""Relay.header_cut must say exactly what net_to_service does: the fast datapath trusts it instead."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eoe_filter.config import build_options
from eoe_filter.relays import RELAYS
from eoe_filter.wire.drops import DropReason


def relay(**extra: object):  # type: ignore[no-untyped-def]
    return RELAYS["eoe"](build_options({"network": "net0", "service": "tap0", "relay": "eoe", **extra}, {}))


@given(st.binary(max_size=200), st.integers(0, 8))
def test_eoe_header_cut_is_what_net_to_service_does(frame: bytes, at: int):
    eoe = relay()
    assert eoe.header_cut is not None
    cut, shortest = eoe.header_cut
    buf = bytearray(at) + bytearray(frame)
    expected = (at + cut, len(buf)) if len(frame) >= shortest else DropReason.RUNT
    assert eoe.net_to_service(buf, at, len(buf)) == expected


def test_an_accept_rule_takes_the_cut_back():
    assert relay(accept_vid=[4094]).header_cut is None
    assert relay(accept_dmac=["06:00:00:00:00:78"]).header_cut is None
    assert RELAYS["dhcp"](build_options({"network": "a", "service": "b", "relay": "dhcp"}, {})).header_cut is None
