"""`eoe_filter doctor -n NET -t SERVICE -E|-V`: every known way the forwarder fails, one line each.

The original's engineers spent days with strace, ftrace and gdb to learn
that a TAP was down. Here each check is a small function from gathered
facts to findings, without I/O (unit-tested on fake links and snapshots);
`gather` alone talks to the kernel: /dev/net/tun, /proc, netlink and the
running forwarder's control endpoint. The checks run in the order in which
the forwarder would trip over the problem, and every FAIL names its fix.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import control
from .forwarder import EX_USAGE
from .link.ethtool import RX_VLAN_FILTER, RX_VLAN_HW_PARSE, Features, read_features
from .link.netif import Link, NetIf
from .link.tap import TUN_CLONE_DEVICE
from .relays.eoe import NET_TO_TAP_MTU, tap_mtu_for
from .stats import DIRECTIONS
from .wire.drops import DropReason
from .wire.eoe import EoeHeader

OK, INFO, FAIL = "ok", "info", "FAIL"
EX_PROBLEM = 1
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
TUN_DEVICE_NUMBER = (10, 200)
"""The misc character device behind /dev/net/tun."""
TAP_TYPE = 2
"""IFLA_TUN_TYPE of a TAP (1 is a TUN)."""
INNER_TAG = 4
DROP_WINDOW = 0.5
"""Seconds between two snapshots of a running forwarder: drops that grow meanwhile are happening now."""


@dataclass(frozen=True, slots=True)
class Finding:
    level: str
    text: str


@dataclass(frozen=True, slots=True)
class TunDevice:
    exists: bool
    char_device: bool
    """It is the tun misc device (10:200), not a stray file."""
    open_error: str | None


@dataclass(frozen=True, slots=True)
class Holder:
    """A process with the TAP attached to one of its /dev/net/tun descriptors."""

    pid: int
    comm: str
    ancestors: tuple[int, ...] = ()
    """Its parent, grandparent...: a forwarder's worker processes hold the TAP on its behalf."""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the checks decide on; built by `gather`, or by hand in tests."""

    relay: str
    network: str
    service: str
    vid: int = EoeHeader().vid
    tun: TunDevice | None = None
    cap_eff: int = 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW
    net: Link | None = None
    svc: Link | None = None
    features: dict[str, Features | str] = field(default_factory=dict)
    """Per interface, its NIC features or why they could not be read."""
    vlans: dict[str, frozenset[int]] = field(default_factory=dict)
    """Per interface, the VIDs of the VLAN devices on top of it (what a VLAN filter lets through)."""
    holders: tuple[Holder, ...] = ()
    snapshot: dict | None = None
    later: dict | None = None
    """A second snapshot of the same forwarder, `window` seconds after the first."""
    window: float = DROP_WINDOW
    control_error: str | None = None
    others: tuple[dict, ...] = ()
    """Snapshots of the other forwarders of this network namespace."""

    @property
    def flag(self) -> str:
        return "-E" if self.relay == "eoe" else "-V"

    @property
    def start_command(self) -> str:
        return f"eoe_filter -n {self.network} -t {self.service} {self.flag}"

    @property
    def forwarder_pid(self) -> int | None:
        """The pid of a forwarder that serves this service with this relay and network."""
        s = self.snapshot
        if s is None or s["relay"] != self.relay or s["network"] != self.network:
            return None
        return s["pid"]


def ok(text: str) -> Finding:
    return Finding(OK, text)


def info(text: str) -> Finding:
    return Finding(INFO, text)


def fail(text: str) -> Finding:
    return Finding(FAIL, text)


# --- the checks: facts in, findings out, no I/O -------------------------------------------------

def check_tun(f: Facts) -> list[Finding]:
    t = f.tun
    assert t is not None
    if not t.exists:
        return [fail(f"{TUN_CLONE_DEVICE} does not exist: the tun driver is not loaded, no TAP can be made; "
                     f"fix: modprobe tun (or mknod {TUN_CLONE_DEVICE} c 10 200)")]
    if not t.char_device:
        return [fail(f"{TUN_CLONE_DEVICE} is not the tun character device 10:200; "
                     f"fix: rm {TUN_CLONE_DEVICE} && mknod {TUN_CLONE_DEVICE} c 10 200")]
    if t.open_error is not None:
        return [fail(f"{TUN_CLONE_DEVICE} is not accessible: {t.open_error}; fix: check its mode (crw-rw-rw-), "
                     "the mount of /dev (nodev?) and the device cgroup of the service")]
    return [ok(f"tun: {TUN_CLONE_DEVICE} is usable")]


def check_privileges(f: Facts) -> list[Finding]:
    missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
               if not f.cap_eff >> bit & 1]
    fix = "fix: run it as root, or grant them (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
    if "CAP_NET_RAW" in missing or (missing and f.relay == "eoe"):
        return [fail(f"privileges: {' and '.join(missing)} missing (CapEff {f.cap_eff:016x}): eoe_filter started "
                     f"from here cannot open raw sockets{' or the TAP' if f.relay == 'eoe' else ''}; {fix}")]
    if missing:
        return [info("privileges: CAP_NET_ADMIN missing: the relay works, with socket buffers limited to "
                     "net.core.rmem_max/wmem_max")]
    return [ok("privileges: CAP_NET_ADMIN and CAP_NET_RAW are effective")]


def _link_findings(link: Link | None, name: str, role: str) -> list[Finding]:
    if link is None:
        return [fail(f"{role} {name} does not exist: eoe_filter exits with 69; "
                     f"fix: check the name (ip link show), or create {name}")]
    if not link.up:
        return [fail(f"{role} {name} is down: nothing is received or sent on it; fix: ip link set {name} up")]
    if not link.carrier:
        return [fail(f"{role} {name} has no carrier (cable, peer or switch port down): nothing arrives on it; "
                     f"fix: check the cable or the peer, then ip link show {name}")]
    return [ok(f"{role} {name} is up with carrier, MTU {link.mtu}")]


def check_network(f: Facts) -> list[Finding]:
    return _link_findings(f.net, f.network, "network interface")


def check_network_in_use(f: Facts) -> list[Finding]:
    users = [o for o in f.others if o["network"] == f.network and o["service"] != f.service]
    if not users:
        return [ok(f"{f.network} is not used by another eoe_filter")]
    return [fail(f"{f.network} is already forwarded by eoe_filter pid {o['pid']} for {o['service']}: a second "
                 f"forwarder on {f.network} refuses to start (exit 69); fix: stop pid {o['pid']} or use another "
                 "network interface") for o in users]


def check_service(f: Facts) -> list[Finding]:
    if f.relay == "dhcp":
        return _link_findings(f.svc, f.service, "service interface")
    return check_tap(f)


def _owned_by(holder: Holder, pid: int | None) -> bool:
    return pid is not None and (holder.pid == pid or pid in holder.ancestors)


def _who(holders: list[Holder]) -> str:
    return ", ".join(f"pid {h.pid} ({h.comm})" for h in holders)


def check_tap(f: Facts) -> list[Finding]:
    tap, name, pid = f.svc, f.service, f.forwarder_pid
    if tap is None:
        if pid is not None:
            return [fail(f"TAP {name} does not exist although eoe_filter pid {pid} serves it: it was deleted "
                         f"under it; fix: restart eoe_filter ({f.start_command})")]
        return [fail(f"TAP {name} does not exist (a TAP that is not persistent vanishes with the process that "
                     f"held it); fix: start {f.start_command}, which creates it")]
    if tap.kind != "tun" or tap.tun_type != TAP_TYPE:
        kind = "a TUN" if tap.kind == "tun" else f"kind {tap.kind or 'unknown'}"
        return [fail(f"{name} exists and is not a TAP device ({kind}): eoe_filter refuses it; "
                     f"fix: ip link del {name}, or choose another -t")]
    found = []
    if tap.tun_multi_queue and pid is None:
        return [fail(f"TAP {name} is multi-queue: eoe_filter attaches it only with --workers N (N > 1, "
                     f"as many queues); for one worker, fix: ip tuntap del dev {name} mode tap multi_queue, "
                     "then let eoe_filter create it")]
    if tap.tun_multi_queue:
        found.append(info(f"TAP {name} is multi-queue: eoe_filter pid {pid} runs with --workers, a queue each"))
    if not tap.up and pid is None:
        found.append(info(f"TAP {name} is down: eoe_filter brings it up when it starts"))
    elif not tap.up:
        found.append(fail(f"TAP {name} is down: writes to it fail with EIO, every frame from {f.network} is "
                          f"dropped; fix: ip link set {name} up (eoe_filter brings it up itself when it starts)"))
    strangers = [h for h in f.holders if not _owned_by(h, pid)]
    if strangers and pid is not None:
        found.append(fail(f"TAP {name} is also held by {_who(strangers)}, not by eoe_filter pid {pid}: it "
                          f"shares the forwarder's TAP and can read its frames; fix: stop {_who(strangers)}"))
    elif strangers:
        found.append(fail(f"TAP {name} is attached by another process: {_who(strangers)}; eoe_filter cannot "
                          f"attach it (EBUSY); fix: stop that process, or choose another -t"))
    if not tap.tun_persist and pid is None:
        holder = _who(strangers) if strangers else "the process that holds it"
        found.append(fail(f"TAP {name} is not persistent and no eoe_filter holds it: it vanishes when {holder} "
                          f"closes it; fix: let eoe_filter create it ({f.start_command}, add --persist to keep "
                          f"it), or make it persistent: ip tuntap del dev {name} mode tap; "
                          f"ip tuntap add dev {name} mode tap"))
    if any(x.level == FAIL for x in found):
        return found
    if pid is None:
        return [ok(f"TAP {name} is persistent and free: eoe_filter can attach it")] + found
    held = f", attached by eoe_filter pid {pid}" if any(_owned_by(h, pid) for h in f.holders) else ""
    found.append(ok(f"TAP {name} is up{held}"))
    if not tap.tun_persist:
        found.append(info(f"TAP {name} is not persistent: it vanishes when eoe_filter pid {pid} exits "
                          "(--persist keeps it)"))
    return found


def check_tap_mtu(f: Facts) -> list[Finding]:
    net, tap = f.net, f.svc
    if net is None:
        return [info(f"TAP MTU not checked: {f.network} does not exist")]
    limit = net.mtu - NET_TO_TAP_MTU
    vlan_hint = info(f"inner VLANs: a VLAN device on {f.service} adds a {INNER_TAG}-byte tag; keep its MTU at "
                     f"most {limit - INNER_TAG} (--tap-mtu {limit - INNER_TAG}), or raise {f.network}'s MTU by "
                     f"{INNER_TAG} and keep --tap-mtu {limit}")
    if tap is None or tap.kind != "tun":
        return [info(f"TAP {f.service} gets MTU {tap_mtu_for(net.mtu)} ({f.network} MTU {net.mtu} - "
                     f"{NET_TO_TAP_MTU}) when eoe_filter creates it"), vlan_hint]
    if tap.mtu > limit and f.forwarder_pid is None:
        return [info(f"TAP {f.service} MTU {tap.mtu} is larger than {f.network} MTU {net.mtu} - {NET_TO_TAP_MTU}: "
                     f"eoe_filter sets {limit} when it starts (unless --tap-mtu says otherwise)"), vlan_hint]
    if tap.mtu > limit:
        return [fail(f"TAP {f.service} MTU {tap.mtu} is larger than {f.network} MTU {net.mtu} - {NET_TO_TAP_MTU} "
                     f"= {limit}: full-size frames from {f.service} cannot be sent on {f.network} (EMSGSIZE, "
                     f"dropped as too big); fix: ip link set {f.service} mtu {limit} (eoe_filter sets it at "
                     "start unless --tap-mtu says otherwise)"), vlan_hint]
    return [ok(f"TAP {f.service} MTU {tap.mtu} fits {f.network} MTU {net.mtu} - {NET_TO_TAP_MTU} = {limit}"),
            vlan_hint]


def _nic_findings(f: Facts, name: str, vid: int | None) -> list[Finding]:
    features = f.features.get(name)
    if features is None:
        return [info(f"NIC features of {name} not checked: {name} does not exist")]
    if isinstance(features, str):
        return [info(f"NIC features of {name} not read ({features}); check by hand: ethtool -k {name} | grep vlan")]

    def state(feature: str, shown: str) -> str:
        fixed = "" if feature in features.changeable else " [fixed]"
        return f"{shown} {'on' if feature in features.active else 'off'}{fixed}"

    found = []
    filtering = state(RX_VLAN_FILTER, "rx-vlan-filter")
    allowed = f.vlans.get(name, frozenset())
    turn_off = f", or ethtool -K {name} rx-vlan-filter off" if RX_VLAN_FILTER in features.changeable else ""
    if RX_VLAN_FILTER not in features.active:
        found.append(ok(f"{name} passes every VLAN ({filtering})"))
    elif vid is None:
        vids = ", ".join(map(str, sorted(allowed))) or "none"
        found.append(info(f"{name} drops the VLANs it was not told about ({filtering}); only the VIDs of its VLAN "
                          f"devices pass: {vids}; if the OAM or DHCP VLAN is not among them, fix: "
                          f"ip link add link {name} name {name[:10]}.VID type vlan id VID{turn_off}"))
    elif vid in allowed:
        found.append(ok(f"{name} filters VLANs ({filtering}) and lets VID {vid} through (a VLAN device has it)"))
    else:
        found.append(fail(f"{name} drops the VLANs it was not told about ({filtering}) and VID {vid} is not among "
                          "them: the NIC can eat every EOE frame (promiscuous mode does not lift this filter on "
                          f"every NIC); fix: ip link add link {name} name {name[:10]}.{vid} type vlan id {vid}"
                          f"{turn_off}"))
    by = "the NIC" if RX_VLAN_HW_PARSE in features.active else "the kernel"
    found.append(info(f"{name} {state(RX_VLAN_HW_PARSE, 'rx-vlan-offload')}: {by} lifts the tag of received "
                      "frames; eoe_filter restores it from packet metadata, either setting works"))
    return found


def check_nic(f: Facts) -> list[Finding]:
    if f.relay == "eoe":
        return _nic_findings(f, f.network, f.vid)
    return _nic_findings(f, f.network, None) + _nic_findings(f, f.service, None)


_WHY: dict[DropReason, tuple[str, str]] = {
    DropReason.RUNT: ("they were shorter than an EOE frame (36 bytes)",
                      "find what sends non-EOE frames to {network}; -F keeps them out in the kernel"),
    DropReason.FILTERED: ("the relay's acceptance rule refused them", "none if they were not meant for the relay"),
    DropReason.TAP_DOWN: ("{service} was down", "ip link set {service} up"),
    DropReason.NET_DOWN: ("{dest} was down or had no carrier", "ip link set {dest} up, then check its carrier"),
    DropReason.TOO_BIG: ("they were larger than {dest} accepts", "keep the TAP MTU at most {network} MTU - 18"),
    DropReason.NO_BUFFERS: ("the kernel had no buffer space (ENOBUFS)", "lower the load or raise txqueuelen"),
    DropReason.QUEUE_OVERFLOW: ("the forwarder did not read them in time (socket queue overflow)",
                                "lower the load or choose a faster --datapath"),
    DropReason.TRUNCATED: ("they were larger than the receive buffer", "check the sender's MTU"),
    DropReason.OTHER: ("of other send or receive errors", "read the forwarder's log"),
}


def drop_findings(f: Facts) -> list[Finding]:
    """Past drops are information; drops that grew between the two snapshots are a problem now."""
    assert f.snapshot is not None
    found = []
    for key, label in DIRECTIONS:
        dest = f.service if key == "net_to_service" else f.network
        before = f.snapshot["counters"][key]["drops"]
        after = f.later["counters"][key]["drops"] if f.later is not None else before
        for reason_name, n in before.items():
            if not n:
                continue  # none, or not counted (a kernel filter)
            reason = DropReason[reason_name.upper()]
            why, fix = (text.format(service=f.service, network=f.network, dest=dest) for text in _WHY[reason])
            now = (after.get(reason_name) or 0) - n
            if now > 0:
                found.append(fail(f"{label}: dropping now, {now} frames in the last {f.window:.1f} s "
                                  f"({reason.label}) because {why}; fix: {fix}"))
            else:
                found.append(info(f"{label}: {n} frames dropped ({reason.label}) because {why}; "
                                  "none during this check"))
    return found


def check_forwarder(f: Facts) -> list[Finding]:
    if f.control_error is not None:
        return [fail(f"cannot read the forwarder of {f.service}: {f.control_error}; fix: run doctor as root")]
    s = f.snapshot
    if s is None:
        return [fail(f"no eoe_filter is running for {f.service} in this network namespace: nothing is forwarded; "
                     f"fix: start {f.start_command} (if it stopped, its log says why)")]
    if s["relay"] != f.relay:
        return [fail(f"the eoe_filter for {f.service} (pid {s['pid']}) runs relay {s['relay']}, not {f.relay}; "
                     f"fix: stop pid {s['pid']} and start {f.start_command}")]
    if s["network"] != f.network:
        return [fail(f"the eoe_filter for {f.service} (pid {s['pid']}) forwards to {s['network']}, not "
                     f"{f.network}; fix: stop pid {s['pid']} and start {f.start_command}")]
    c = s["counters"]
    head = ok(f"eoe_filter pid {s['pid']} forwards {f.network} <-> {f.service} (relay {s['relay']}, datapath "
              f"{s['datapath']}{', filter on' if s['filter'] else ''}), up {timedelta(seconds=int(s['uptime']))}: "
              f"{c['net_to_service']['frames']} frames net -> service, "
              f"{c['service_to_net']['frames']} service -> net")
    return [head] + drop_findings(f)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    relays: tuple[str, ...]
    run: Callable[[Facts], list[Finding]]


CHECKS: tuple[Check, ...] = (
    Check("tun", ("eoe",), check_tun),
    Check("privileges", ("eoe", "dhcp"), check_privileges),
    Check("network", ("eoe", "dhcp"), check_network),
    Check("network in use", ("eoe", "dhcp"), check_network_in_use),
    Check("service", ("eoe", "dhcp"), check_service),
    Check("tap mtu", ("eoe",), check_tap_mtu),
    Check("nic", ("eoe", "dhcp"), check_nic),
    Check("forwarder", ("eoe", "dhcp"), check_forwarder),
)


def diagnose(facts: Facts) -> list[Finding]:
    return [finding for check in CHECKS if facts.relay in check.relays for finding in check.run(facts)]


def render(findings: list[Finding]) -> str:
    """Plain text, one line each: serial consoles and logs show it as it is."""
    return "\n".join(f"{x.level:<6}{x.text}" for x in findings)


# --- parsing what /proc says, without I/O --------------------------------------------------------

def cap_eff(status: str) -> int:
    """The effective capability mask from /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise ValueError("no CapEff line")


def parent_pid(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise ValueError("no PPid line")


def attached_interface(fdinfo: str) -> str | None:
    """The interface a /dev/net/tun descriptor is attached to: its `iff:` line in /proc/PID/fdinfo/FD."""
    for line in fdinfo.splitlines():
        if line.startswith("iff:"):
            return line[len("iff:"):].strip()
    return None


def vlan_of(msg) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]  # pyroute2 message
    """(parent ifindex, VID) of a VLAN device's RTM_NEWLINK message, None for other kinds."""
    if msg.get(("linkinfo", "kind")) != "vlan":
        return None
    return msg.get("IFLA_LINK"), msg.get(("linkinfo", "data")).get("IFLA_VLAN_ID")


# --- the I/O: gathering the facts ----------------------------------------------------------------

def probe_tun() -> TunDevice:
    try:
        st = os.stat(TUN_CLONE_DEVICE)
    except FileNotFoundError:
        return TunDevice(exists=False, char_device=False, open_error=None)
    char = stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == TUN_DEVICE_NUMBER
    try:
        os.close(os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "?")
        return TunDevice(exists=True, char_device=char, open_error=f"{e.strerror} ({name})")
    return TunDevice(exists=True, char_device=char, open_error=None)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _ancestors(pid: int) -> tuple[int, ...]:
    chain: list[int] = []
    while pid > 1 and len(chain) < 64:
        try:
            pid = parent_pid(_read(f"/proc/{pid}/status"))
        except (OSError, ValueError):
            break
        chain.append(pid)
    return tuple(chain)


def _tun_descriptors(pid: str) -> Iterator[str]:
    """The fdinfo texts of a process's /dev/net/tun descriptors; nothing if it is gone or not ours to read."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == TUN_CLONE_DEVICE:
                yield _read(f"/proc/{pid}/fdinfo/{fd}")
        except OSError:
            continue


def tap_holders(name: str) -> tuple[Holder, ...]:
    """Processes of this network namespace with TAP `name` attached.

    A process is matched by its current namespace: one that attached a TAP
    in another namespace and then moved here would be taken for a holder.
    """
    here = os.readlink("/proc/self/ns/net")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != here:
                continue
        except OSError:
            continue
        if any(attached_interface(text) == name for text in _tun_descriptors(pid)):
            try:
                comm = _read(f"/proc/{pid}/comm").strip()
            except OSError:
                continue
            found.append(Holder(int(pid), comm, _ancestors(int(pid))))
    return tuple(found)


def _vlans(links: dict[str, Link | None]) -> dict[str, frozenset[int]]:
    by_index: dict[int, set[int]] = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            vlan = vlan_of(msg)
            if vlan is not None:
                by_index.setdefault(vlan[0], set()).add(vlan[1])
    return {name: frozenset(by_index.get(link.index, ())) for name, link in links.items() if link is not None}


def _features(name: str) -> Features | str:
    try:
        return read_features(name)
    except NetlinkError as e:
        return f"ethtool netlink: {os.strerror(e.code)}"
    except OSError as e:
        return f"ethtool netlink: {e.strerror or e}"


def gather(relay: str, network: str, service: str, vid: int) -> Facts:
    """Look at the system once; the second forwarder snapshot is taken DROP_WINDOW after the first."""
    control_error = None
    try:
        snapshot = control.query(service)
        first = time.monotonic()
        others = tuple(s for s in (control.query(n) for n in control.running_services() if n != service) if s)
    except PermissionError as e:
        snapshot, others, control_error = None, (), str(e)
        first = time.monotonic()
    tun = probe_tun() if relay == "eoe" else None
    caps = cap_eff(_read("/proc/self/status"))
    with NetIf() as netif:
        net, svc = netif.lookup(network), netif.lookup(service)
    nics = {network: net} if relay == "eoe" else {network: net, service: svc}
    features = {name: _features(name) for name, link in nics.items() if link is not None}
    holders = tap_holders(service) if relay == "eoe" and svc is not None else ()
    later = None
    if snapshot is not None:
        time.sleep(max(0.0, DROP_WINDOW - (time.monotonic() - first)))
        try:
            later = control.query(service)
        except PermissionError:
            later = None
    window = time.monotonic() - first
    if later is not None and snapshot is not None and later.get("pid") != snapshot.get("pid"):
        later = None  # restarted meanwhile: its counters start again from zero
    return Facts(relay=relay, network=network, service=service, vid=vid, tun=tun, cap_eff=caps, net=net,
                 svc=svc, features=features, vlans=_vlans(nics), holders=holders, snapshot=snapshot,
                 later=later, window=window, control_error=control_error, others=others)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def _vid(text: str) -> int:
    vid = int(text, 0)
    if not 0 < vid < 4095:
        raise ValueError(text)
    return vid


def main(argv: list[str]) -> int:
    p = _Parser(prog="eoe_filter doctor",
                description="Check everything that has made or could make the forwarder fail; one line each.",
                epilog="Exit codes: 0 healthy, 1 a problem was found (a FAIL line), 64 usage error. "
                       "It sees the current network namespace only: run it under ip netns exec NS for another.")
    p.add_argument("-n", dest="network", metavar="NETITF", required=True, help="the network interface")
    p.add_argument("-t", dest="service", metavar="SERVICEITF", required=True,
                   help="the service interface: the TAP (-E) or the raw interface (-V)")
    relay = p.add_mutually_exclusive_group(required=True)
    relay.add_argument("-E", dest="relay", action="store_const", const="eoe", help="relay 'eoe'")
    relay.add_argument("-V", dest="relay", action="store_const", const="dhcp", help="relay 'dhcp'")
    p.add_argument("--vid", type=_vid, default=EoeHeader().vid, metavar="VID",
                   help="the VID of the EOE header's tag, which a NIC VLAN filter must let through (default 4094)")
    args = p.parse_args(argv)
    findings = diagnose(gather(args.relay, args.network, args.service, args.vid))
    print(render(findings), flush=True)
    return EX_PROBLEM if any(x.level == FAIL for x in findings) else 0
