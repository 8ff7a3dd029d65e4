"""The command line: the original's flags, unchanged, plus long options and subcommands.

Exit codes follow sysexits(3) so a supervisor can tell a typo (64, 78)
from a missing interface (69) and from a crash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .config import DATAPATHS, ConfigError, Options
from .forwarder import EX_CONFIG, EX_USAGE, Forwarder
from .log import SYSLOG_SOCKET, setup
from .wire.eoe import EoeHeader, parse_mac

USAGE = "eoe_filter -n <network_itf> -t <service_itf> [-s] [-d[d]] [-E|-V] [-F] [options]\n" \
        "       eoe_filter demo\n" \
        "       eoe_filter stats [SERVICE] [--watch] [--json]"
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def _int(text: str) -> int:
    """Decimal or 0x-prefixed hexadecimal, as operators write header fields."""
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number") from None


HEADER_OPTIONS = {
    "dmac": ("dst", parse_mac, "destination MAC of the EOE header", "06:00:00:00:00:f8"),
    "smac": ("src", parse_mac, "source MAC of the EOE header", "06:00:00:00:00:78"),
    "vid": ("vid", _int, "VLAN ID of the header's 802.1Q tag", "4094"),
    "pcp": ("pcp", _int, "priority (PCP) of the header's tag", "0"),
    "dei": ("dei", _int, "drop-eligible bit (DEI) of the header's tag", "0"),
    "op-code": ("op_code", _int, "EOE op_code, 4 bits (8: A2A switch, 1: switch downstream)", "8"),
    "downstream": ("downstream", _int, "EOE downstream bit", "0"),
    "flag": ("flag", _int, "EOE flag, 3 bits", "0"),
    "itf": ("itf", _int, "EOE itf: vlanport, or pon<<12 | gem_port", "0"),
    "protocol-id": ("protocol_id", _int, "EOE protocol_id", "0"),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="eoe_filter", usage=USAGE,
        description="Forward frames between a network interface and a service interface: relay 'eoe' "
                    "(-E) strips the 22-byte EOE header into a TAP device and adds it on the way out; "
                    "relay 'dhcp' (-V) moves DHCP frames between the OAM VLAN and the DHCP VLAN (OAM - 1). "
                    "Runs in the foreground until SIGTERM/SIGINT; SIGUSR1 logs the counters.",
        epilog="Exit codes: 0 stopped cleanly, 64 usage error, 69 interface or /dev/net/tun unavailable "
               "(or vanished), 78 bad option value, 1 other failure.")
    orig = p.add_argument_group("the original's options")
    orig.add_argument("-n", dest="network", metavar="NETITF", required=True, help="network interface to use")
    orig.add_argument("-t", dest="service", metavar="SERVICEITF", required=True,
                      help="service interface: the TAP device to create or attach (-E), a raw interface (-V)")
    orig.add_argument("-s", dest="syslog", action="store_true",
                      help="log to syslog (daemon facility) instead of stdout/stderr")
    orig.add_argument("-d", dest="debug", action="count", default=0,
                      help="debug output, a line per frame; -dd adds a hex dump before and after editing")
    relay = orig.add_mutually_exclusive_group(required=True)
    relay.add_argument("-E", dest="relay", action="store_const", const="eoe",
                       help="relay 'eoe': EOE header handling between NETITF and the TAP SERVICEITF")
    relay.add_argument("-V", dest="relay", action="store_const", const="dhcp",
                       help="relay 'dhcp': the dummy DHCP VLAN between NETITF and SERVICEITF")
    orig.add_argument("-F", dest="filter", action="store_true",
                      help="attach the relay's packet filter to the network socket (eoe: only op_code 1 "
                           "frames without inner 0x08ab; dhcp: only tagged DHCP-client frames)")
    new = p.add_argument_group("options of this implementation")
    new.add_argument("--persist", action="store_true", help="make the TAP persistent: it outlives the process")
    new.add_argument("--tap-mtu", metavar="BYTES", help="TAP MTU (default: network MTU - 18; "
                                                        "add 4 for inner VLAN sub-interfaces)")
    new.add_argument("--syslog-socket", metavar="PATH", default=SYSLOG_SOCKET,
                     help=f"the syslog socket for -s (default {SYSLOG_SOCKET})")
    new.add_argument("--datapath", metavar="NAME", default="simple",
                     help=f"forwarding loop: {', '.join(DATAPATHS)} (default simple)")
    hdr = p.add_argument_group("EOE header fields used on encapsulation (-E)")
    for name, (_, _, text, default) in HEADER_OPTIONS.items():
        hdr.add_argument(f"--{name}", metavar="VALUE", help=f"{text} (default {default})")
    p.add_argument("--version", action="version", version=f"eoe_filter {__version__}")
    return p


def options_from(args: argparse.Namespace) -> Options:
    fields: dict[str, object] = {}
    for name, (field, parse, _, _) in HEADER_OPTIONS.items():
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            try:
                fields[field] = parse(value)
            except ValueError as e:
                raise ConfigError(f"--{name}: {e}") from None
    try:
        header = EoeHeader(**fields)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"--{str(e).replace('_', '-')}") from None
    tap_mtu = None
    if args.tap_mtu is not None:
        try:
            tap_mtu = _int(args.tap_mtu)
        except ConfigError as e:
            raise ConfigError(f"--tap-mtu: {e}") from None
    return Options(network=args.network, service=args.service, relay=args.relay, filter=args.filter,
                   syslog=args.syslog, debug=args.debug, persist=args.persist, tap_mtu=tap_mtu,
                   datapath=args.datapath, header=header)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    try:
        options = options_from(args)
    except ConfigError as e:
        print(f"eoe_filter: {e}", file=sys.stderr)
        return EX_CONFIG
    log = setup(syslog=options.syslog, debug=options.debug, syslog_socket=args.syslog_socket)
    return Forwarder(options, log).run()


def _demo(argv: list[str]) -> int:
    from .demo import main as demo_main
    return demo_main(argv)


def _stats(argv: list[str]) -> int:
    from .stats import main as stats_main
    return stats_main(argv)


SUBCOMMANDS["demo"] = _demo
SUBCOMMANDS["stats"] = _stats
