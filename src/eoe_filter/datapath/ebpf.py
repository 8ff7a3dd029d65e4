"""The in-kernel datapath: the relays' edits run as eBPF programs, Python stays the control plane.

Building it loads and attaches the programs (so that `auto` can still fall
back to userspace when anything is missing) and mutes the forwarder's own
raw sockets (packet taps run before tc ingress; the kernel forwards now).
start() starts one control thread: it follows the interfaces' link events,
re-attaches when the forwarder re-binds to a re-created network interface,
and copies the kernel's per-CPU counters into the shared Counters every
0.1 s. stop() detaches everything we attached and takes the last counts.

Differences from the userspace datapaths (LIMITS):
- a frame the relay takes is redirected: the host's stack no longer sees it
  on the network interface, where a raw socket only copied it;
- nothing is logged per frame (-d), and -dd hex dumps are refused;
- no forwarding threads: the original's four thread start-up lines give way
  to one, "kernel datapath attached (eBPF): ...";
- the kernel counts what -F refuses, which userspace could not;
- the shared counters (SIGUSR1, `stats`) lag the kernel's by up to 0.1 s;
  the exit summary is exact;
- a frame the kernel refuses after a redirect is counted as TAP or network
  down when that interface was down within the last 0.1 s, else as "no
  buffers" (userspace saw ENOBUFS; a full backlog behind a TAP write it
  never saw at all);
- IP frames and TCP super-frames from the TAP go through the segmenter, so
  under load a non-IP frame sent just after an IP one may overtake it; their
  skb->mark is not kept;
- frames sent into the TAP past tc egress (PACKET_QDISC_BYPASS) reach its
  file descriptor as before: one userspace loop, the simple datapath's,
  still forwards those;
- an inner frame longer than 15,360 bytes (programs.STRIP_MAX_INNER: tc
  ingress cannot trim a longer skb) is counted as too big and left to the
  host's stack; a warning says so at start when the network MTU allows
  one, and `auto` keeps to userspace then;
- an EOE frame whose length field (bytes 16-17) and bytes 20-21 both read
  as VLAN EtherTypes (a length of 33024 or more: no real frame) is dropped
  as "other": the kernel would lift part of the inner frame as a tag;
- after SIGKILL, programs attached through netlink (no BPF links: Linux
  before 6.6) stay attached until the next start replaces them (or
  `eoe_filter cleanup` removes them);
- the original of every frame sent is freed by the kernel as a drop (the
  copy is what travels): drop monitors see one per frame.
"""
from __future__ import annotations

import errno
import os
import re
import select
import struct
import threading
import time
from contextlib import ExitStack

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..counters import Counters, DirectionCounters
from ..ebpf import programs as P
from ..ebpf import syscall as sc
from ..ebpf.asm import HELPER_NAMES, assemble, encode
from ..ebpf.attach import Attacher, AttachError, Hook, Interface
from ..ebpf.netdev import LinkWatch, Segmenter
from ..link.netif import IFF_UP
from ..link.packet_socket import PacketSocket
from ..log import RateLimited
from ..privileges import CAP_BPF, CAP_NET_ADMIN
from ..relays.base import Unavailable
from ..wire.accept import AcceptRule
from ..wire.drops import DropReason
from ..wire.eoe import ETH_HEADER_LEN, HEADER_LEN
from ..wire.vlan import TAG_LEN, dhcp_to_oam_vid, oam_to_dhcp_vid
from . import DatapathContext
from .simple import Direction

SYNC_INTERVAL = 0.1
"""How stale the shared counters (SIGUSR1, `stats`; the exit summary is exact) may be, in seconds."""
SETTLE = 0.02
"""Ample time for a frame redirected into the TAP to land there (a softirq's backlog run)."""
ATTACH_ENV = "EOE_FILTER_BPF_ATTACH"
"""Force how programs are attached: "link" (BPF links) or "netlink" (clsact filters); unset probes."""
_U64 = (1 << 64) - 1
_WARNED = (DropReason.TAP_DOWN, DropReason.NET_DOWN, DropReason.TOO_BIG, DropReason.NO_BUFFERS, DropReason.OTHER)
"""Drops that userspace reports as a (rate-limited) send error; the kernel datapath says them too."""


def unavailable_reason(e: sc.BpfError) -> str:
    """The one line an operator needs when the kernel refuses: what is missing, not the whole verifier log."""
    if e.errno == errno.EPERM:
        return "bpf() not permitted: CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN are needed"
    if e.errno == errno.ENOSYS:
        return "this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"
    match = re.search(r"(?:invalid func|unknown func) [^#\s]*#(\d+)", e.log)
    if match:
        number = int(match.group(1))
        helper = HELPER_NAMES.get(number, f"helper {number}")
        return f"this kernel lacks the eBPF helper bpf_{helper}() ({e.what})"
    lines = [line for line in e.log.strip().splitlines() if line and not line.startswith("processed ")]
    return f"{e.what}: {e.strerror}" + (f" ({lines[-1]})" if lines else "")


class EbpfDatapath:
    """Programs loaded and attached on construction; raises Unavailable with the reason otherwise."""

    name = "ebpf"
    capabilities = frozenset({CAP_BPF, CAP_NET_ADMIN})
    """Loading programs and maps again (a re-created interface or TAP) and attaching them."""

    def __init__(self, ctx: DatapathContext, lossless: bool = False) -> None:
        self.ctx = ctx
        self.lossless = lossless
        """Refuse (rather than warn about) a network MTU that lets through frames the programs cannot forward."""
        relay = ctx.relay.name
        if relay not in ("eoe", "dhcp"):
            raise Unavailable(f"eBPF datapath unavailable: relay {relay} has no kernel programs")
        if ctx.debug > 1:
            raise Unavailable("eBPF datapath unavailable: -dd hex dumps need every frame in userspace")
        self._undo = ExitStack()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._undo.callback(os.close, self._stop_read)
        self._undo.callback(os.close, self._stop_write)
        self._last = [[0] * P.SLOTS, [0] * P.SLOTS]
        self._thread: threading.Thread | None = None
        self._up: dict[int, bool] = {}
        self._epoch = 0
        self._lost = [0, 0]
        """Per epoch: frames injected into the TAP that never arrived, as of the last settling."""
        self._down_seen: set[int] = set()
        """Interfaces down at some moment since the last sync."""
        self._service_down = DropReason.TAP_DOWN if relay == "eoe" else DropReason.NET_DOWN
        """What userspace called a failed write to the service side while it was down."""
        self.segmenter: Segmenter | None = None
        self.attacher: Attacher | None = None
        self.limited = RateLimited(ctx.log)
        self._bypass_counters = Counters()
        self._bypass_last = [[0] * P.SLOTS, [0] * P.SLOTS]
        self._bypass: Direction | None = None
        try:
            self._build()
        except BaseException as e:
            self._undo.close()
            if isinstance(e, sc.BpfError):
                raise Unavailable(f"eBPF datapath unavailable: {unavailable_reason(e)}") from None
            if isinstance(e, AttachError | NetlinkError | OSError):
                raise Unavailable(f"eBPF datapath unavailable: {e}") from None
            raise

    # --- set-up -------------------------------------------------------------------------

    def _build(self) -> None:
        ctx = self.ctx
        self.ipr = IPRoute()
        self._undo.callback(self.ipr.close)
        self.maps = {m.name: self._keep(sc.create_map(m.type, 4, m.value_size, m.entries, m.name))
                     for m in P.MAPS}
        self.service = self._service_interface()
        self.watch = LinkWatch()  # before the first state read: no change can slip between the two
        self._undo.callback(self.watch.close)
        if ctx.relay.name == "eoe":
            self._check_mtu()
            self.segmenter = Segmenter(self.ipr, self.service.name)
            self._undo.callback(self.segmenter.close)
            if self.segmenter.create():
                ctx.log.info("replaced segmenter %s left by a killed earlier run", self.segmenter.near)
        self._undo.callback(self._mute, False)
        self._undo.callback(self._detach)
        self._attach()

    def _check_mtu(self) -> None:
        """Frames whose inner part exceeds P.STRIP_MAX_INNER are counted as too big, never forwarded."""
        mtu = self.ipr.get_links(self.ctx.net.ifindex)[0].get_attr("IFLA_MTU")
        largest = mtu + ETH_HEADER_LEN + TAG_LEN - HEADER_LEN
        if largest <= P.STRIP_MAX_INNER:
            return
        why = (f"network MTU {mtu} lets inner frames of up to {largest} bytes through, and the kernel programs "
               f"forward at most {P.STRIP_MAX_INNER}")
        if self.lossless:
            raise Unavailable(f"eBPF datapath unavailable: {why}")
        self.ctx.log.warning("%s: larger ones are counted as too big (--datapath fast forwards them)", why)

    def _keep(self, fd: int) -> int:
        self._undo.callback(os.close, fd)
        return fd

    def _service_interface(self) -> Interface:
        service = self.ctx.service
        if isinstance(service, PacketSocket):
            return Interface(service.ifindex, service.ifname)
        name = self.ctx.relay.options.service
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise AttachError(f"TAP {name} vanished")
        return Interface(found[0], name)

    def _attach(self) -> None:
        """Load and attach every program for the interfaces' current indexes."""
        ctx = self.ctx
        self._mute(True)
        self.net = Interface(ctx.net.ifindex, ctx.net.ifname)
        self.watched = (self.net.index, self.service.index)
        self._note_links({index: self._is_up(index) for index in self.watched})
        use_links = {"link": True, "netlink": False}.get(os.environ.get(ATTACH_ENV, ""))
        self.attacher = Attacher(self.ipr, ctx.log, use_links)
        self._programs = ExitStack()
        stale = [f"{what} on {where.name}" for where in (self.net, self.service)
                 for what in self.attacher.remove_stale(where)]
        if stale:
            ctx.log.info("replaced what a killed earlier run left attached: %s", ", ".join(stale))
        if ctx.relay.name == "eoe":
            self._attach_eoe()
        else:
            self._attach_dhcp()

    def _mute(self, mute: bool) -> None:
        """Stop (or restart) the forwarder's raw sockets receiving: packet taps run before tc ingress.

        Muted, a socket is bound to a protocol no Ethernet frame carries: it
        gets nothing and costs nothing per frame, still sends, and keeps its
        promiscuous membership.
        """
        for port in (self.ctx.net, self.ctx.service):
            if not isinstance(port, PacketSocket):
                continue
            try:
                if mute:
                    port.mute()
                else:
                    port.bind(port.ifname, port.ifindex)
            except OSError as e:  # the interface is gone: the forwarder binds again when it comes back
                self.ctx.log.debug("%s: %s", port.ifname, e.strerror)

    def _detach(self) -> None:
        if self.attacher is not None:
            self.attacher.close()
            self._programs.close()
            self.attacher = None

    def _load(self, spec: P.ProgramSpec) -> int:
        code = encode(assemble(spec.items, self.maps))
        fd = sc.load_program(spec.type, code, spec.name, flags=sc.F_STRICT_ALIGNMENT)
        self._programs.callback(os.close, fd)
        return fd

    def _attach_eoe(self) -> None:
        assert self.attacher is not None and self.segmenter is not None
        options, net, tap, attach = self.ctx.relay.options, self.net, self.service, self.attacher.attach
        template, rule = options.header.pack(0), AcceptRule(options.accept_dmac, options.accept_vid)
        seg = self.segmenter
        attach(self._load(P.eoe_arrival_tc()), tap, Hook.INGRESS)  # first attached, last detached
        attach(self._load(P.eoe_encap_tc(template, net.index)), Interface(seg.far_index, seg.far), Hook.INGRESS)
        attach(self._load(P.eoe_to_segmenter_tc(seg.near_index)), tap, Hook.EGRESS)
        attach(self._load(P.eoe_decap_tc(options.filter, rule, tap.index)), net, Hook.INGRESS)

    def _attach_dhcp(self) -> None:
        assert self.attacher is not None
        net, service, options = self.net, self.service, self.ctx.relay.options
        rule = AcceptRule(options.accept_dmac, options.accept_vid)
        self.attacher.attach(self._load(P.dhcp_tc(P.SERVICE_TO_NET, dhcp_to_oam_vid, net.index, False,
                                                  AcceptRule())), service, Hook.INGRESS)
        self.attacher.attach(self._load(P.dhcp_tc(P.NET_TO_SERVICE, oam_to_dhcp_vid, service.index,
                                                  options.filter, rule)), net, Hook.INGRESS)

    # --- the datapath interface ---------------------------------------------------------

    def start(self) -> None:
        ctx = self.ctx
        # The kernel counts what the userspace path left to a socket filter.
        ctx.counters.net_to_service.uncounted = frozenset()
        self._thread = threading.Thread(target=self._control, name="ebpf control", daemon=True)
        self._thread.start()
        if ctx.relay.name == "eoe":
            relay = ctx.relay
            self._bypass = Direction("service to net", ctx.service, ctx.net, relay.service_to_net,
                                     relay.service_headroom, self._bypass_counters.service_to_net,
                                     self._stop_read, ctx.on_fatal, ctx.log, ctx.debug)
            self._bypass.start()
        assert self.attacher is not None
        ctx.log.info("kernel datapath attached (eBPF): %s", "; ".join(self.attacher.done))

    def alive(self) -> bool:
        threads = (self._thread, self._bypass) if self._bypass is not None else (self._thread,)
        return all(t is not None and t.is_alive() for t in threads)

    def stop(self) -> None:
        if self._bypass is not None:
            self._bypass.stopping = True
        os.write(self._stop_write, b"x")
        for thread in (self._thread, self._bypass):
            if thread is not None:
                thread.join()
        self._thread = self._bypass = None
        if self.attacher is not None and self.ctx.relay.name == "eoe":
            self.attacher.close(keep=1)  # all but the TAP's arrival count, while the last injected frames land
            time.sleep(SETTLE)
        self._detach()
        self.sync(final=True)
        self._undo.close()

    # --- control plane ------------------------------------------------------------------

    def _control(self) -> None:
        poller = select.poll()
        poller.register(self.watch.fileno(), select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        due = time.monotonic() + SYNC_INTERVAL
        try:
            while True:
                ready = {fd for fd, _ in poller.poll(max(0.0, due - time.monotonic()) * 1000)}
                if self._stop_read in ready:
                    return
                if self.watch.fileno() in ready:
                    self._follow_links()
                if self.ctx.net.ifindex != self.net.index:
                    self._reattach()
                if time.monotonic() >= due:
                    self.sync()
                    due += SYNC_INTERVAL
        except Exception as e:  # a control-plane bug must end the service loudly
            self.ctx.log.exception("eBPF control loop failed")
            self.ctx.on_fatal(f"eBPF control loop failed: {e}")

    def _reattach(self) -> None:
        """The forwarder re-bound the network socket to a re-created interface: follow it."""
        self._detach()
        try:
            self._attach()
        except (sc.BpfError, AttachError, NetlinkError) as e:
            self._detach()
            self.ctx.on_fatal(f"cannot re-attach the eBPF programs to {self.ctx.net.ifname}: {e}")
            return
        assert self.attacher is not None
        self.ctx.log.info("kernel datapath re-attached (eBPF): %s", "; ".join(self.attacher.done))

    def _follow_links(self) -> None:
        try:
            events, lost = self.watch.events(), False
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            events, lost = [], True  # the kernel dropped events: read the state afresh
        seg = self.segmenter
        mine = {seg.near_index, seg.far_index} if seg is not None else set()
        if any(event.deleted and event.index in mine for event in events):
            self.ctx.on_fatal(f"segmenter {seg.near if seg else ''} was deleted")
        state = {e.index: e.up and not e.deleted for e in events if e.index in self.watched}
        if lost:
            state = {index: self._is_up(index) for index in self.watched}
        self._note_links(state)

    def _is_up(self, index: int) -> bool:
        try:
            return bool(self.ipr.get_links(index)[0]["flags"] & IFF_UP)
        except NetlinkError:
            return False

    def _settle(self, totals: list[int], final: bool) -> int:
        """Frames injected into the TAP in epochs now over that never arrived; then start the next epoch.

        The epoch flips at every sync, so the one left a sync ago has had
        0.1 s for its frames to land: injected minus arrived is exact.
        """
        over = (0, 1) if final else (1 - self._epoch,)
        refused = 0
        for epoch in over:
            lost = _signed(totals[P.SLOT_INJECTED + epoch] - totals[P.SLOT_ARRIVED + epoch])
            refused += lost - self._lost[epoch]
            self._lost[epoch] = lost
        if not final:
            self._epoch = over[0]
            sc.update(self.maps[P.EPOCH], 0, struct.pack("=I", self._epoch))
        return refused

    def _note_links(self, state: dict[int, bool]) -> None:
        self._up |= state
        self._down_seen |= {index for index, up in state.items() if not up}

    def sync(self, final: bool = False) -> None:
        """Add what the programs (and the bypass loop) counted since the last call to the shared counters.

        The control thread is the only writer of the shared counters: the
        bypass loop counts into counters of its own, merged here. Frames the
        kernel refused after a redirect are named here: when their target
        went down, its down event was queued before they were refused, so
        draining the link events after reading the map tells which. Frames
        injected into the TAP are known refused once their epoch is over
        (`final`: every epoch is, the programs being detached).
        """
        cpus = sc.possible_cpus()
        deltas = []
        for key in (P.NET_TO_SERVICE, P.SERVICE_TO_NET):
            raw = sc.lookup(self.maps[P.COUNTERS], key, P.COUNTERS_VALUE * cpus)
            slots = struct.unpack(f"={P.SLOTS * cpus}Q", raw)
            totals = [sum(slots[slot::P.SLOTS]) & _U64 for slot in range(P.SLOTS)]
            delta = [_signed(now - before) for now, before in zip(totals, self._last[key])]
            self._last[key] = totals
            bypass = _slots(self._bypass_counters.directions[key])
            deltas.append([d + now - before for d, now, before in zip(delta, bypass, self._bypass_last[key])])
            self._bypass_last[key] = bypass
            if key == P.NET_TO_SERVICE:
                deltas[-1][P.SLOT_REFUSED] += self._settle(totals, final)
        self._follow_links()
        targets = ((self.service.index, self._service_down), (self.net.index, DropReason.NET_DOWN))
        for delta, (target, down) in zip(deltas, targets):
            reason = down if target in self._down_seen else DropReason.NO_BUFFERS
            delta[P.drop_slot(reason)] += delta[P.SLOT_REFUSED]
        self._down_seen = {index for index, up in self._up.items() if not up}
        directions = (self.ctx.counters.net_to_service, self.ctx.counters.service_to_net)
        for key, (counters, delta) in enumerate(zip(directions, deltas)):
            _apply(counters, delta)
            for reason in _WARNED:
                if delta[P.drop_slot(reason)] > 0:
                    self.limited.warning((key, reason), f"{counters.name}: {delta[P.drop_slot(reason)]} frame(s) "
                                                        f"dropped ({reason.label}) in the kernel datapath")


def _signed(delta: int) -> int:
    """Per-CPU slots sum modulo 2**64: a slot one CPU decremented wraps on its own."""
    delta &= _U64
    return delta - (1 << 64) if delta >> 63 else delta


def _slots(counters: DirectionCounters) -> list[int]:
    """A DirectionCounters in the programs' slot layout."""
    slots = [0] * P.SLOTS
    slots[P.SLOT_FRAMES], slots[P.SLOT_BYTES] = counters.frames, counters.bytes
    for reason in DropReason:
        slots[P.drop_slot(reason)] = counters.dropped(reason)
    return slots


def _apply(counters: DirectionCounters, delta: list[int]) -> None:
    if delta[P.SLOT_FRAMES] or delta[P.SLOT_BYTES]:
        counters.add(delta[P.SLOT_FRAMES], delta[P.SLOT_BYTES])
    for reason in DropReason:
        if delta[P.drop_slot(reason)]:
            counters.drop(reason, delta[P.drop_slot(reason)])

