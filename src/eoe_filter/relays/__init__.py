"""Relays are plug-ins registered by name; importing this package registers the built-in ones."""

from . import dhcp, eoe  # noqa: F401  (registration)
from .base import RELAYS, Relay

__all__ = ["RELAYS", "Relay"]
