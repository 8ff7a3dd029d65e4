"""Operator tools for EOE frames (scapy layer, Wireshark dissector); not imported by the forwarder."""
