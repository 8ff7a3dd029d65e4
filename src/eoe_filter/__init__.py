"""eoe_filter: EOE/TAP and DHCP-VLAN packet forwarder."""

__version__ = "0.1.0"
