"""One forwarder process: check, set up, forward until told to stop, then undo what it changed.

The control loop (this module) owns everything that is not per frame:
signals, counters, systemd, and the interfaces' life. When the network
interface vanishes it waits for it and re-binds; when the service side
vanishes it re-creates it and restarts the datapath. The forwarding loops
only move frames and report a port they can no longer use.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import select
import signal
import time
from contextlib import ExitStack

from . import privileges
from .config import Options
from .control import AlreadyRunning, ControlServer
from .counters import Counters
from .datapath import Datapath, DatapathContext, datapaths
from .link.monitor import LinkEvent, LinkMonitor
from .link.netif import IFF_NOARP, Link, NetIf
from .link.packet_socket import PacketSocket
from .link.tap import TapError
from .notify import Notifier
from .relays import RELAYS
from .relays.base import Context, Port, Relay, Unavailable, open_raw_side
from .state import InterfaceState, StateStore
from .wire.drops import DropReason

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78

TICK = 0.5
"""The control loop's period: queue-drop counters, watchdog, deadlines."""
STATUS_INTERVAL = 5.0


class Forwarder:
    def __init__(self, options: Options, log: logging.Logger, state: StateStore | None = None) -> None:
        self.options = options
        self.log = log
        self.relay: Relay = RELAYS[options.relay](options)
        self.counters = Counters(options.workers)
        if options.filter:
            self.counters.net_to_service.uncounted = frozenset({DropReason.FILTERED})
        self.notifier = Notifier.from_env()
        self.state = state or StateStore()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop_requested = False
        self._dump_requested = False
        self._fatal: str | None = None
        self._service_lost: str | None = None
        self._network_lost_at: float | None = None
        self._started = time.time()
        self._started_monotonic = time.monotonic()
        self.network: Link
        self.net: PacketSocket
        self.service: Port | None = None
        self.datapath: Datapath | None = None
        self._datapath_name = options.datapath
        self._datapath_choice = ""
        """Why `auto` chose the datapath it runs."""

    def run(self) -> int:
        """Forward until SIGTERM/SIGINT or a fatal condition; return the exit code."""
        lacking = privileges.missing(set(self.relay.capabilities))
        if lacking:
            self.log.error("missing %s: run as root, or grant %s to eoe_filter", " and ".join(lacking),
                           " and ".join(lacking))
            return EX_NOPERM
        with NetIf() as netif:
            try:
                self.network = self._preflight(netif)
                control = ControlServer(self.options.service, self.options.network)
            except (Unavailable, AlreadyRunning) as e:
                self.log.error("%s", e)
                return EX_UNAVAILABLE
            try:
                return self._serve(netif, control)
            except (TapError, Unavailable) as e:
                self.log.error("%s", e)
                return EX_UNAVAILABLE
            except PermissionError as e:
                self.log.error("not permitted: %s (CAP_NET_ADMIN and CAP_NET_RAW are needed)", e.strerror)
                return EX_UNAVAILABLE
            finally:
                control.close()

    def snapshot(self) -> dict[str, object]:
        """What `eoe_filter stats` shows: read live from the shared counters."""
        o = self.options
        return {
            "pid": os.getpid(), "relay": o.relay, "network": o.network, "service": o.service,
            "datapath": self._datapath_name, "datapath_choice": self._datapath_choice, "filter": o.filter,
            "started": self._started,
            "uptime": time.monotonic() - self._started_monotonic, "time": time.time(),
            "counters": {"net_to_service": self.counters.net_to_service.as_dict(),
                         "service_to_net": self.counters.service_to_net.as_dict()},
            "workers": [{"net_to_service": down.as_dict(), "service_to_net": up.as_dict()}
                        for down, up in self.counters.workers_counters],
        }

    def _preflight(self, netif: NetIf) -> Link:
        network = netif.lookup(self.options.network)
        if network is None:
            raise Unavailable(f"network interface {self.options.network} does not exist")
        self.relay.preflight(netif)
        return network

    def _serve(self, netif: NetIf, control: ControlServer) -> int:
        log, options, relay = self.log, self.options, self.relay
        log.info("Starting forwarder application: eoe_filter")
        for line in relay.banner:
            log.info("%s", line)
        log.info("Argument are: netItf: %s, serviceItf: %s", options.network, options.service)
        for warning in relay.startup_warnings():
            log.warning("%s", warning)
        with ExitStack() as undo:
            self.net = open_raw_side(log, self.network, relay.classic_filter() if options.filter else None,
                                     options.qdisc_bypass,
                                     lambda sock: self._claim_network(netif, sock))
            undo.callback(self.net.close)
            undo.callback(self._release_network, netif)
            self.service = relay.open_service(self._context(netif))
            undo.callback(self._release_service)
            with LinkMonitor() as monitor, self._signals():
                undo.callback(self._stop_datapath)
                self.datapath = self._create_datapath()
                if options.user is not None:  # after the choice, before any thread or worker process
                    self._drop_privileges(options.user, self.datapath.capabilities)
                self.datapath.start()
                control.serve(self.snapshot)
                self.notifier.ready()
                self._supervise(netif, monitor)
                self.notifier.stopping()
                self._stop_datapath()
            self._collect_queue_drops()
        log.info("%s", self.counters.render())
        if self._fatal is not None:
            log.error("%s; stopping", self._fatal)
            return EX_UNAVAILABLE
        return EX_OK

    def _context(self, netif: NetIf) -> Context:
        return Context(self.options, netif, self.log, self.network)

    # --- the network interface: promiscuous, NOARP, remembered on disk --------------------------

    def _claim_network(self, netif: NetIf, sock: PacketSocket) -> None:
        if not self.relay.promiscuous_noarp:
            return
        name = self.network.name
        self.log.info("Setting %s to promiscuous mode and disable ARP resolution", name)
        self._set_promiscuous_noarp(netif, sock, self.network)
        self.log.info("%s is now set in promiscuous mode and ARP resolution is disabled", name)

    def _set_promiscuous_noarp(self, netif: NetIf, sock: PacketSocket, link: Link) -> None:
        sock.add_promiscuous(link.index)
        self._recover_stale_state(netif, link)
        link = netif.by_index(link.index) or link
        try:
            self.state.save(InterfaceState(link.name, link.index, bool(link.flags & IFF_NOARP), os.getpid()))
        except OSError as e:
            self.log.warning("cannot record %s's flags under %s (%s): after a crash, restore ARP by hand",
                             link.name, self.state.dir, e.strerror)
        if not link.flags & IFF_NOARP:
            netif.set_flag(link.index, IFF_NOARP, True)

    def _recover_stale_state(self, netif: NetIf, link: Link) -> None:
        """Undo what a forwarder that died without cleaning up left on this interface."""
        stale = self.state.load(link.name)
        if stale is None or stale.owner_alive() or stale.pid == os.getpid():
            return
        if not stale.noarp_before and link.flags & IFF_NOARP:
            netif.set_flag(link.index, IFF_NOARP, False)
            self.log.warning("restored ARP on %s, left disabled by eoe_filter pid %d that did not exit cleanly",
                             link.name, stale.pid)
        self.state.remove(link.name)

    def _release_network(self, netif: NetIf) -> None:
        saved = self.state.load(self.options.network)
        if saved is None or saved.pid != os.getpid():
            return
        link = netif.lookup(saved.interface)
        if link is not None and link.index == saved.index and not saved.noarp_before:
            netif.set_flag(link.index, IFF_NOARP, False)
            self.log.debug("ARP resolution restored on %s", link.name)
        self.state.remove(saved.interface)

    def _drop_privileges(self, user: str, datapath_needs: frozenset[int]) -> None:
        entry = pwd.getpwnam(user)
        keep = self.relay.capabilities | datapath_needs
        self.state.give_to(entry.pw_uid, entry.pw_gid)
        privileges.drop_to(user, set(keep))
        self.log.debug("running as %s (uid %d) with %s", user, entry.pw_uid,
                       ", ".join(privileges.CAP_NAMES[c] for c in sorted(keep)))

    # --- the datapath and the service side --------------------------------------------------------

    def _create_datapath(self) -> Datapath:
        """The datapath by name; `auto` chooses once, and a restart keeps its choice (and the privileges
        kept for it)."""
        assert self.service is not None
        ctx = DatapathContext(self.net, self.service, self.relay, self.counters, self._port_lost, self.log,
                              self.options.debug)
        datapath = datapaths()[self._datapath_name](ctx)
        if ctx.choice:
            self._datapath_name, self._datapath_choice = datapath.name, ctx.choice
        return datapath

    def _start_datapath(self) -> None:
        self.datapath = self._create_datapath()
        self.datapath.start()

    def _stop_datapath(self) -> None:
        if self.datapath is not None:
            self.datapath.stop()
            self.datapath = None

    def _release_service(self) -> None:
        if self.service is not None:
            self.relay.release_service(self.service)
            self.service = None

    def _port_lost(self, why: str) -> None:
        """Called by a forwarding loop (any thread) that cannot use a port any more."""
        if self._service_lost is None:
            self._service_lost = why
        self._wake()

    def _restore_service(self, netif: NetIf) -> None:
        """Restart the datapath after a loop gave up, re-creating the service side if it vanished."""
        if self.datapath is not None:
            self.log.warning("%s; restarting the datapath", self._service_lost)
            self._stop_datapath()
        assert self.service is not None
        try:
            self.service = self.relay.reopen_service(self._context(netif), self.service)
        except (Unavailable, TapError) as e:
            self.log.debug("service side not back yet: %s", e)
            return
        self._service_lost = None
        self._start_datapath()
        self.log.warning("%s is back; forwarding resumed", self.options.service)

    # --- the control loop ----------------------------------------------------------------------------

    def _supervise(self, netif: NetIf, monitor: LinkMonitor) -> None:
        watchdog = self.notifier.watchdog_interval() is not None
        next_status = 0.0
        wait_link = self.options.wait_link
        while True:
            readable, _, _ = select.select([self._wake_read, monitor], [], [], TICK)
            if self._wake_read in readable:
                self._drain_wake()
            if monitor in readable:
                for event in monitor.events():
                    self._on_link(netif, event)
                if monitor.overflowed:
                    monitor.overflowed = False
                    self._resync(netif)
            if self._service_lost is not None:
                self._restore_service(netif)
            self._collect_queue_drops()
            if self._network_lost_at is not None and wait_link is not None \
                    and time.monotonic() - self._network_lost_at > wait_link:
                self._fatal = f"network interface {self.options.network} did not come back within {wait_link:g} s"
            if watchdog and self.datapath is not None and self.datapath.alive():
                self.notifier.watchdog()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL
                self.notifier.status(self._status_line())
            if self._dump_requested:
                self._dump_requested = False
                self.log.info("%s", self.counters.render())
            if self._stop_requested or self._fatal is not None:
                return

    def _on_link(self, netif: NetIf, event: LinkEvent) -> None:
        link, options = event.link, self.options
        if link.name == options.network:
            if event.deleted and link.index == self.network.index and self._network_lost_at is None:
                self._network_lost_at = time.monotonic()
                self.log.warning("network interface %s was deleted; waiting for it to come back%s", link.name,
                                 "" if options.wait_link is None else f" (at most {options.wait_link:g} s)")
            elif not event.deleted and link.index != self.network.index:
                self._rebind_network(netif, link)
            elif not event.deleted and link.mtu != self.network.mtu:
                self.network = link
                self._follow_mtu(netif)
        elif link.name == options.service and event.deleted and self._service_lost is None:
            self._service_lost = f"{options.service} was deleted"

    def _resync(self, netif: NetIf) -> None:
        """Events were lost: compare what is there with what we hold."""
        network = netif.lookup(self.options.network)
        self._on_link(netif, LinkEvent(deleted=network is None, link=network or self.network))
        if netif.lookup(self.options.service) is None and self._service_lost is None:
            self._service_lost = f"{self.options.service} was deleted"

    def _rebind_network(self, netif: NetIf, link: Link) -> None:
        """The network interface came back (a driver reload re-creates it): same socket, new index."""
        self.network = link
        self._network_lost_at = None
        if self.relay.promiscuous_noarp:
            self._set_promiscuous_noarp(netif, self.net, link)
        self.net.bind(link.name, link.index)
        self._follow_mtu(netif)
        self.log.warning("network interface %s is back (index %d); forwarding resumed", link.name, link.index)

    def _follow_mtu(self, netif: NetIf) -> None:
        mtu = self.relay.follow_network_mtu(self._context(netif))
        if mtu is not None:
            self.log.warning("network interface %s MTU is now %d; %s MTU set to %d", self.network.name,
                             self.network.mtu, self.options.service, mtu)

    def _status_line(self) -> str:
        o, c = self.options, self.counters
        drops = sum(d.dropped(r) for d in c.directions for r in DropReason)
        return (f"{o.network} <-> {o.service} ({o.relay}, {o.datapath}): {c.net_to_service.frames} frames in, "
                f"{c.service_to_net.frames} out, {drops} dropped")

    def _collect_queue_drops(self) -> None:
        try:
            _, drops = self.net.take_statistics()
        except OSError:
            return
        if drops:
            self.counters.net_to_service.drop(DropReason.QUEUE_OVERFLOW, drops)

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except OSError as e:  # a full pipe is already a wake-up
            if e.errno != errno.EAGAIN:
                raise

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def _signals(self) -> ExitStack:
        def stop(signum: int, _frame: object) -> None:
            self._stop_requested = True
            self._wake()

        def dump(signum: int, _frame: object) -> None:
            self._dump_requested = True
            self._wake()

        stack = ExitStack()
        for signum, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGUSR1, dump)):
            stack.callback(signal.signal, signum, signal.signal(signum, handler))
        return stack
