"""What one forwarder process is asked to do, validated before anything is touched."""

from __future__ import annotations

from dataclasses import dataclass, field

from .wire.eoe import EoeHeader


class ConfigError(ValueError):
    """A bad option value: exit 78 (EX_CONFIG), so a supervisor does not restart a typo."""


DATAPATHS = ("simple",)


@dataclass(frozen=True)
class Options:
    network: str
    service: str
    relay: str
    filter: bool = False
    syslog: bool = False
    debug: int = 0
    persist: bool = False
    tap_mtu: int | None = None
    datapath: str = "simple"
    header: EoeHeader = field(default_factory=EoeHeader)

    def __post_init__(self) -> None:
        for name in ("network", "service"):
            value = getattr(self, name)
            if not value or len(value) > 15 or "/" in value or value.strip() != value:
                raise ConfigError(f"{name}: {value!r} is not a valid interface name (1-15 characters)")
        if self.network == self.service:
            raise ConfigError(f"network and service interfaces are both {self.network!r}")
        if self.tap_mtu is not None and not 68 <= self.tap_mtu <= 65535:
            raise ConfigError(f"tap-mtu: {self.tap_mtu} is outside 68..65535")
        if self.datapath not in DATAPATHS:
            raise ConfigError(f"datapath: {self.datapath!r} is not one of {', '.join(DATAPATHS)}")
