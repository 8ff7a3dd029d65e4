"""NIC features (`ethtool -k`) read through ethtool's generic netlink family.

The ioctl interface (SIOCETHTOOL) is the legacy one and pyroute2's netlink
ethtool client has no FEATURES_GET, so the request is spoken here. Feature
names are the kernel's (`rx-vlan-hw-parse`, which `ethtool -k` shows under
its legacy alias `rx-vlan-offload`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.ethtool import ethtoolbitset, ethtoolheader

ETHTOOL_GENL_NAME = "ethtool"
ETHTOOL_GENL_VERSION = 1
ETHTOOL_MSG_FEATURES_GET = 11

RX_VLAN_FILTER = "rx-vlan-filter"
"""NETIF_F_HW_VLAN_CTAG_FILTER: the NIC drops tagged frames whose VID no VLAN device registered."""
RX_VLAN_HW_PARSE = "rx-vlan-hw-parse"
"""NETIF_F_HW_VLAN_CTAG_RX (`rxvlan`, `rx-vlan-offload`): the NIC strips the 802.1Q tag into metadata."""


@dataclass(frozen=True, slots=True)
class Features:
    active: frozenset[str]
    changeable: frozenset[str]
    """What `ethtool -K` may toggle; the others are `[fixed]`."""


class _FeaturesMsg(genlmsg):
    nla_map = (
        ("ETHTOOL_A_FEATURES_UNSPEC", "none"),
        ("ETHTOOL_A_FEATURES_HEADER", "ethtoolheader"),
        ("ETHTOOL_A_FEATURES_HW", "ethtoolbitset"),
        ("ETHTOOL_A_FEATURES_WANTED", "ethtoolbitset"),
        ("ETHTOOL_A_FEATURES_ACTIVE", "ethtoolbitset"),
        ("ETHTOOL_A_FEATURES_NOCHANGE", "ethtoolbitset"),
    )
    ethtoolheader = ethtoolheader
    ethtoolbitset = ethtoolbitset


def _names(bitset) -> frozenset[str]:  # type: ignore[no-untyped-def]  # pyroute2 nla
    """The set bits of a verbose bitset: all listed bits without a mask, else those with VALUE."""
    nomask = bool(bitset.get_attr("ETHTOOL_A_BITSET_NOMASK"))
    bits = bitset.get_attr("ETHTOOL_A_BITSET_BITS")
    listed = bits.get_attrs("ETHTOOL_A_BITSET_BITS_BIT") if bits is not None else []
    return frozenset(b.get_attr("ETHTOOL_A_BITSET_BIT_NAME") for b in listed
                     if nomask or b.get_attr("ETHTOOL_A_BITSET_BIT_VALUE"))


def read_features(ifname: str) -> Features:
    """The features of `ifname` in the caller's network namespace; raises NetlinkError/OSError."""
    sock = GenericNetlinkSocket()
    try:
        sock.bind(ETHTOOL_GENL_NAME, _FeaturesMsg)
        msg = _FeaturesMsg()
        msg["cmd"] = ETHTOOL_MSG_FEATURES_GET
        msg["version"] = ETHTOOL_GENL_VERSION
        msg["attrs"].append(("ETHTOOL_A_FEATURES_HEADER", {"attrs": [["ETHTOOL_A_HEADER_DEV_NAME", ifname]]}))
        (reply,) = tuple(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST))
    finally:
        sock.close()
    hw = _names(reply.get_attr("ETHTOOL_A_FEATURES_HW"))
    fixed = _names(reply.get_attr("ETHTOOL_A_FEATURES_NOCHANGE"))
    return Features(active=_names(reply.get_attr("ETHTOOL_A_FEATURES_ACTIVE")), changeable=hw - fixed)
