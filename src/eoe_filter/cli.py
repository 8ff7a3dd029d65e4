"""The command line: the original's flags, unchanged, plus long options and subcommands.

Exit codes follow sysexits(3) so a supervisor can tell a typo (64, 78)
from a missing interface (69) and from a crash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .config import (
    DATAPATHS,
    HEADER_SETTINGS,
    HEADER_TABLE,
    MAX_WORKERS,
    REQUIRED,
    SETTINGS,
    ConfigError,
    Options,
    build_options,
    load_file,
)
from .forwarder import EX_CONFIG, EX_USAGE, Forwarder
from .log import setup
from .wire.eoe import EoeHeader, format_mac

USAGE = "eoe_filter -n <network_itf> -t <service_itf> [-s] [-d[d]] [-E|-V] [-F] [options]\n" \
        "       eoe_filter demo\n" \
        "       eoe_filter stats [SERVICE] [--watch] [--json]\n" \
        "       eoe_filter bench [--quick] [--datapaths LIST] [--sizes LIST] [--repeat N] [--json] [--chart PNG]\n" \
        "       eoe_filter cleanup\n" \
        "       eoe_filter doctor -n <network_itf> -t <service_itf> -E|-V [--vid VID]"
SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


class _Usage(Exception):
    """A usage error found after parsing (a required setting in neither the file nor the command line)."""


HEADER_HELP = {
    "dmac": "destination MAC of the EOE header",
    "smac": "source MAC of the EOE header",
    "vid": "VLAN ID of the header's 802.1Q tag",
    "pcp": "priority (PCP) of the header's tag",
    "dei": "drop-eligible bit (DEI) of the header's tag",
    "op_code": "EOE op_code, 4 bits (8: A2A switch, 1: switch downstream)",
    "downstream": "EOE downstream bit",
    "flag": "EOE flag, 3 bits",
    "itf": "EOE itf: vlanport, or pon<<12 | gem_port",
    "protocol_id": "EOE protocol_id",
}


def _header_default(key: str) -> str:
    value = getattr(EoeHeader(), HEADER_SETTINGS[key][0])
    return format_mac(value) if isinstance(value, bytes) else str(value)



_OPTION_OF = {"network": "-n", "service": "-t", "relay": "-E/-V", "filter": "-F", "syslog": "-s", "debug": "-d"}


def _spelling(key: str) -> str:
    """A setting as the user wrote it: `-n`, `--tap-mtu`, `--op-code`."""
    if key.startswith(HEADER_TABLE + "."):
        key = key.split(".", 1)[1]
    return _OPTION_OF.get(key, "--" + key.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    """Every option defaults to None, so that only what the user typed overrides --config."""
    p = _Parser(
        prog="eoe_filter", usage=USAGE,
        description="Forward frames between a network interface and a service interface: relay 'eoe' "
                    "(-E) strips the 22-byte EOE header into a TAP device and adds it on the way out; "
                    "relay 'dhcp' (-V) moves DHCP frames between the OAM VLAN and the DHCP VLAN (OAM - 1). "
                    "Runs in the foreground until SIGTERM/SIGINT; SIGUSR1 logs the counters.",
        epilog="Exit codes: 0 stopped cleanly, 64 usage error, 69 interface or /dev/net/tun unavailable "
               "(or vanished, or already used by another eoe_filter), 78 bad option value, 1 other failure.")
    orig = p.add_argument_group("the original's options")
    orig.add_argument("-n", dest="network", metavar="NETITF", help="network interface to use")
    orig.add_argument("-t", dest="service", metavar="SERVICEITF",
                      help="service interface: the TAP device to create or attach (-E), a raw interface (-V)")
    orig.add_argument("-s", dest="syslog", action="store_const", const=True,
                      help="log to syslog (daemon facility) instead of stdout/stderr")
    orig.add_argument("-d", dest="debug", action="count",
                      help="debug output, a line per frame; -dd adds a hex dump before and after editing")
    relay = orig.add_mutually_exclusive_group()
    relay.add_argument("-E", dest="relay", action="store_const", const="eoe",
                       help="relay 'eoe': EOE header handling between NETITF and the TAP SERVICEITF")
    relay.add_argument("-V", dest="relay", action="store_const", const="dhcp",
                       help="relay 'dhcp': the dummy DHCP VLAN between NETITF and SERVICEITF")
    orig.add_argument("-F", dest="filter", action="store_const", const=True,
                      help="attach the relay's packet filter to the network socket (eoe: only op_code 1 "
                           "frames without inner 0x08ab; dhcp: only tagged DHCP-client frames)")
    new = p.add_argument_group("options of this implementation")
    new.add_argument("--config", metavar="FILE", type=Path,
                     help="TOML file with any of these settings (command-line options override it)")
    new.add_argument("--persist", action="store_const", const=True,
                     help="make the TAP persistent: it outlives the process")
    new.add_argument("--tap-mtu", metavar="BYTES", help="TAP MTU (default: network MTU - 18; "
                                                        "add 4 for inner VLAN sub-interfaces)")
    new.add_argument("--user", metavar="NAME",
                     help="after opening the sockets and the TAP, run as NAME with only CAP_NET_ADMIN and "
                          "CAP_NET_RAW, plus CAP_BPF with the eBPF datapath (every process, workers included)")
    new.add_argument("--accept-dmac", metavar="MAC[,MAC...]",
                     help="take from the network only frames to these destination MACs (others: counted as "
                          "filtered)")
    new.add_argument("--accept-vid", metavar="VID[,VID...]",
                     help="take from the network only frames whose outer 802.1Q tag has one of these VIDs")
    new.add_argument("--wait-link", metavar="SECONDS",
                     help="how long to wait for a deleted network interface to come back before exiting 69 "
                          "(default: forever)")
    new.add_argument("--qdisc-bypass", action="store_const", const=True,
                     help="send to the network interface straight to its driver (PACKET_QDISC_BYPASS): "
                          "cheaper, but skips its qdisc (no shaping, no queue) and tcpdump on it no longer "
                          "sees the frames sent")
    new.add_argument("--syslog-socket", metavar="PATH", help="the syslog socket for -s (default /dev/log)")
    new.add_argument("--datapath", metavar="NAME",
                     help=f"forwarding loop: {', '.join(DATAPATHS)} (default {Options.datapath}; simple, a thread "
                          "per direction, is the reference)")
    new.add_argument("--workers", metavar="N",
                     help="worker pairs of the fast datapath (-E with the fast datapath only; any other datapath or -V "
                          "with N > 1 is a config error, exit 78): a multi-queue TAP with N queues and N network "
                          "sockets in a PACKET_FANOUT group that sends each inner flow (inner IPv4 addresses and "
                          "TCP/UDP ports, inner IPv6 addresses, else inner MACs) to one worker, so frames of a "
                          f"flow keep their order (default {Options.workers}, at most {MAX_WORKERS})")
    hdr = p.add_argument_group("EOE header fields used on encapsulation (-E)")
    for key, text in HEADER_HELP.items():
        hdr.add_argument(_spelling(key), dest=key, metavar="VALUE", help=f"{text} (default {_header_default(key)})")
    p.add_argument("--version", action="version", version=f"eoe_filter {__version__}")
    return p


def options_from(args: argparse.Namespace) -> Options:
    """Options from the config file (if any) overridden by what the command line gives."""
    values: dict[str, object] = {}
    header: dict[str, object] = {}
    if args.config is not None:
        values, header = load_file(args.config)
    names = {key: f"{args.config}: {key}" for key in values}
    names |= {f"{HEADER_TABLE}.{key}": f"{args.config}: {HEADER_TABLE}.{key}" for key in header}
    for key in SETTINGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
            names[key] = _spelling(key)
    for key in HEADER_SETTINGS:
        if getattr(args, key) is not None:
            header[key] = getattr(args, key)
            names[f"{HEADER_TABLE}.{key}"] = _spelling(key)
    missing = [_spelling(key) for key in REQUIRED if key not in values]
    if missing:
        raise _Usage(f"missing {', '.join(missing)} (on the command line or in --config)")
    return build_options(values, header, names=names)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except _Usage as e:
        parser.error(str(e))
    except ConfigError as e:
        print(f"eoe_filter: {e}", file=sys.stderr)
        return EX_CONFIG
    log = setup(syslog=options.syslog, debug=options.debug, syslog_socket=options.syslog_socket)
    return Forwarder(options, log).run()


def _demo(argv: list[str]) -> int:
    from .demo import main as demo_main
    return demo_main(argv)


def _stats(argv: list[str]) -> int:
    from .stats import main as stats_main
    return stats_main(argv)


def _bench(argv: list[str]) -> int:
    from .bench.command import main as bench_main
    return bench_main(argv)


def _doctor(argv: list[str]) -> int:
    from .doctor import main as doctor_main
    return doctor_main(argv)


def _cleanup(argv: list[str]) -> int:
    from .cleanup import main as cleanup_main
    return cleanup_main(argv)


SUBCOMMANDS["demo"] = _demo
SUBCOMMANDS["cleanup"] = _cleanup
SUBCOMMANDS["stats"] = _stats
SUBCOMMANDS["bench"] = _bench
SUBCOMMANDS["doctor"] = _doctor
