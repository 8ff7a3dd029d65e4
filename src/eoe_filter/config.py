"""What one forwarder process is asked to do, from the command line and/or a TOML file.

Every setting is declared once here, with the parser that validates it, so
that the command line and `--config FILE` accept exactly the same things
and report a bad value the same way: one line naming the key, exit 78.
"""

from __future__ import annotations

import pwd
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .wire.eoe import EoeHeader, parse_mac


class ConfigError(ValueError):
    """A bad option value: exit 78 (EX_CONFIG), so a supervisor does not restart a typo."""


DATAPATHS = ("simple", "fast", "ebpf", "auto")
MAX_WORKERS = 64
"""Worker pairs of `--workers`; the tun driver allows 256 queues, a board has far fewer cores."""
RELAY_NAMES = ("eoe", "dhcp")


def _int(value: object) -> int:
    """Decimal or 0x-prefixed hexadecimal from the command line; an integer from TOML."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _interface(value: object) -> str:
    name = _str(value)
    if not name or len(name) > 15 or "/" in name or name.strip() != name:
        raise ValueError(f"{name!r} is not a valid interface name (1-15 characters)")
    return name


def _one_of(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)
    return parse


def _range(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        number = _int(value)
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}..{high}")
        return number
    return parse


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number of seconds")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < 1e9:
        raise ValueError(f"{seconds:g} is not a positive number of seconds")
    return seconds


def _mac(value: object) -> bytes:
    return parse_mac(_str(value))


def _list_of(parse: Callable[[object], object]) -> Callable[[object], frozenset[object]]:
    """A TOML list, or a comma-separated command-line value."""
    def parse_all(value: object) -> frozenset[object]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items:
            raise ValueError(f"{value!r} is not a non-empty list")
        return frozenset(parse(item.strip() if isinstance(item, str) else item) for item in items)
    return parse_all


def _user(value: object) -> str:
    name = _str(value)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user {name!r}") from None
    return name


SETTINGS: dict[str, Callable[[object], object]] = {
    "network": _interface,
    "service": _interface,
    "relay": _one_of(*RELAY_NAMES),
    "filter": _bool,
    "syslog": _bool,
    "syslog_socket": _str,
    "debug": _range(0, 2),
    "persist": _bool,
    "tap_mtu": _range(68, 65521),  # the tun driver refuses more (65535 - 14)
    "datapath": _one_of(*DATAPATHS),
    "workers": _range(1, MAX_WORKERS),
    "wait_link": _seconds,
    "qdisc_bypass": _bool,
    "user": _user,
    "accept_dmac": _list_of(_mac),
    "accept_vid": _list_of(_range(0, 4095)),
}
"""Top-level keys of the config file; the command line's options map onto the same names."""

HEADER_SETTINGS: dict[str, tuple[str, Callable[[object], object]]] = {
    "dmac": ("dst", _mac), "smac": ("src", _mac), "vid": ("vid", _int), "pcp": ("pcp", _int),
    "dei": ("dei", _int), "op_code": ("op_code", _int), "downstream": ("downstream", _int),
    "flag": ("flag", _int), "itf": ("itf", _int), "protocol_id": ("protocol_id", _int),
}
"""Keys of the config file's [eoe] table (the EOE header used on encapsulation)."""
HEADER_TABLE = "eoe"


@dataclass(frozen=True)
class Options:
    network: str
    service: str
    relay: str
    filter: bool = False
    syslog: bool = False
    syslog_socket: str = "/dev/log"
    debug: int = 0
    persist: bool = False
    tap_mtu: int | None = None
    datapath: str = "fast"
    """The forwarding loop; `simple` (a thread per direction) is the reference the others are checked against."""
    workers: int = 1
    """Worker pairs of the fast datapath: TAP queues and network sockets in one fanout group."""
    wait_link: float | None = None
    """How long a vanished network interface may stay away before we give up (None: forever)."""
    qdisc_bypass: bool = False
    """Send to the network side's driver directly: opt-in, as it hides our frames from tcpdump there."""
    user: str | None = None
    """Run as this user once the sockets and the TAP are open, with only the capabilities needed."""
    accept_dmac: frozenset[bytes] = frozenset()
    accept_vid: frozenset[int] = frozenset()
    header: EoeHeader = field(default_factory=EoeHeader)


REQUIRED = ("network", "service", "relay")


def build_options(values: dict[str, object], header: dict[str, object], *,
                  names: dict[str, str] | None = None) -> Options:
    """Validate raw values (strings from the command line, TOML values from a file) into Options.

    `names` spells a key ("tap_mtu", "eoe.vid") the way the user wrote it, for errors.
    """
    names = names or {}

    def spelling(key: str) -> str:
        return names.get(key, key)

    parsed: dict[str, object] = {}
    for key, raw in values.items():
        try:
            parsed[key] = SETTINGS[key](raw)
        except ValueError as e:
            raise ConfigError(f"{spelling(key)}: {e}") from None
    fields_: dict[str, object] = {}
    for key, raw in header.items():
        name, parse = HEADER_SETTINGS[key]
        try:
            fields_[name] = parse(raw)
            EoeHeader(**{name: fields_[name]})  # type: ignore[arg-type]
        except ValueError as e:
            why = str(e).removeprefix(f"{name}: ")
            raise ConfigError(f"{spelling(HEADER_TABLE + '.' + key)}: {why}") from None
    if parsed.get("network") is not None and parsed.get("network") == parsed.get("service"):
        raise ConfigError(f"network and service interfaces are both {parsed['network']!r}")
    workers = int(parsed.get("workers", 1))  # type: ignore[call-overload]
    if workers > 1 and (parsed.get("datapath", Options.datapath) != "fast" or parsed.get("relay") == "dhcp"):
        raise ConfigError(f"{spelling('workers')}: {workers} worker pairs need the fast datapath and relay eoe "
                          "(--datapath fast -E)")
    if parsed.get("datapath") == "ebpf" and int(parsed.get("debug") or 0) > 1:  # type: ignore[call-overload]
        raise ConfigError("datapath ebpf: -dd hex dumps need every frame in userspace (use fast, simple or auto)")
    return Options(**parsed, header=EoeHeader(**fields_))  # type: ignore[arg-type]


def load_file(path: Path) -> tuple[dict[str, object], dict[str, object]]:
    """(settings, [eoe] table) of a TOML config file; unknown keys are errors, not ignored."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    header = doc.pop(HEADER_TABLE, {})
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: {HEADER_TABLE} must be a table ([{HEADER_TABLE}])")
    for key in doc:
        if key not in SETTINGS:
            raise ConfigError(f"{path}: unknown key {key!r}")
    for key in header:
        if key not in HEADER_SETTINGS:
            raise ConfigError(f"{path}: unknown key '{HEADER_TABLE}.{key}'")
    return doc, header


OPTION_FIELDS = frozenset(f.name for f in fields(Options))
assert OPTION_FIELDS - {"header"} == set(SETTINGS), "every setting is an Options field"
