"""One forwarder process: check, set up, forward until told to stop, then undo what it changed."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import ExitStack

from .config import Options
from .control import AlreadyRunning, ControlServer
from .counters import Counters
from .datapath import Datapath, DatapathContext, datapaths
from .link.netif import IFF_NOARP, Link, NetIf
from .link.packet_socket import PacketSocket
from .link.tap import TapError
from .notify import Notifier
from .relays import RELAYS
from .relays.base import Context, Relay, Unavailable, open_raw_side
from .wire.drops import DropReason

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78

STATS_INTERVAL = 0.5
STATUS_INTERVAL = 5.0


class Forwarder:
    def __init__(self, options: Options, log: logging.Logger) -> None:
        self.options = options
        self.log = log
        self.relay: Relay = RELAYS[options.relay](options)
        self.counters = Counters()
        if options.filter:
            self.counters.net_to_service.uncounted = frozenset({DropReason.FILTERED})
        self.notifier = Notifier.from_env()
        self._wake = threading.Event()
        self._stop_requested = False
        self._dump_requested = False
        self._fatal: str | None = None
        self._started = time.time()
        self._started_monotonic = time.monotonic()

    def run(self) -> int:
        """Forward until SIGTERM/SIGINT or a fatal condition; return the exit code."""
        with NetIf() as netif:
            try:
                network = self._preflight(netif)
                control = ControlServer(self.options.service, self.options.network)
            except (Unavailable, AlreadyRunning) as e:
                self.log.error("%s", e)
                return EX_UNAVAILABLE
            try:
                return self._serve(netif, network, control)
            except (TapError, Unavailable) as e:
                self.log.error("%s", e)
                return EX_UNAVAILABLE
            except PermissionError as e:
                self.log.error("not permitted: %s (CAP_NET_ADMIN and CAP_NET_RAW are needed)", e.strerror)
                return EX_UNAVAILABLE
            finally:
                control.close()

    def _preflight(self, netif: NetIf) -> Link:
        network = netif.lookup(self.options.network)
        if network is None:
            raise Unavailable(f"network interface {self.options.network} does not exist")
        self.relay.preflight(netif)
        return network

    def snapshot(self) -> dict[str, object]:
        """What `eoe_filter stats` shows: read live from the shared counters."""
        o = self.options
        return {
            "pid": os.getpid(), "relay": o.relay, "network": o.network, "service": o.service,
            "datapath": o.datapath, "filter": o.filter, "started": self._started,
            "uptime": time.monotonic() - self._started_monotonic, "time": time.time(),
            "counters": {"net_to_service": self.counters.net_to_service.as_dict(),
                         "service_to_net": self.counters.service_to_net.as_dict()},
        }

    def _serve(self, netif: NetIf, network: Link, control: ControlServer) -> int:
        log, options, relay = self.log, self.options, self.relay
        log.info("Starting forwarder application: eoe_filter")
        for line in relay.banner:
            log.info("%s", line)
        log.info("Argument are: netItf: %s, serviceItf: %s", options.network, options.service)
        for warning in relay.startup_warnings():
            log.warning("%s", warning)
        with ExitStack() as undo:
            net = open_raw_side(log, network, relay.classic_filter() if options.filter else None,
                                lambda sock: self._promiscuous_noarp(netif, network, sock, undo))
            undo.callback(net.close)
            service = relay.open_service(Context(options, netif, log, network))
            undo.callback(relay.release_service, service)
            datapath = datapaths()[options.datapath](
                DatapathContext(net, service, relay, self.counters, self._fail, log, options.debug))
            with self._signals():
                datapath.start()
                control.serve(self.snapshot)
                self.notifier.ready()
                self._supervise(net, datapath)
                self.notifier.stopping()
                datapath.stop()
            self._collect_queue_drops(net)
        log.info("%s", self.counters.render())
        if self._fatal is not None:
            log.error("%s; stopping", self._fatal)
            return EX_UNAVAILABLE
        return EX_OK

    def _promiscuous_noarp(self, netif: NetIf, network: Link, sock: PacketSocket, undo: ExitStack) -> None:
        if not self.relay.promiscuous_noarp:
            return
        name = network.name
        self.log.info("Setting %s to promiscuous mode and disable ARP resolution", name)
        sock.add_promiscuous(network.index)
        if not network.flags & IFF_NOARP:
            netif.set_flag(network.index, IFF_NOARP, True)
            undo.callback(self._restore_arp, netif, network)
        self.log.info("%s is now set in promiscuous mode and ARP resolution is disabled", name)

    def _restore_arp(self, netif: NetIf, network: Link) -> None:
        link = netif.lookup(network.name)
        if link is not None and link.index == network.index:
            netif.set_flag(link.index, IFF_NOARP, False)
            self.log.debug("ARP resolution restored on %s", network.name)

    def _supervise(self, net: PacketSocket, datapath: Datapath) -> None:
        """The control loop: signals, counter dumps, the kernel's queue-drop counter, systemd."""
        watchdog = self.notifier.watchdog_interval() is not None
        next_status = 0.0
        while True:
            self._wake.wait(STATS_INTERVAL)
            self._wake.clear()
            self._collect_queue_drops(net)
            if watchdog and datapath.alive():
                self.notifier.watchdog()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_INTERVAL
                self.notifier.status(self._status_line())
            if self._dump_requested:
                self._dump_requested = False
                self.log.info("%s", self.counters.render())
            if self._stop_requested or self._fatal is not None:
                return

    def _status_line(self) -> str:
        o, c = self.options, self.counters
        drops = sum(d.dropped(r) for d in c.directions for r in DropReason)
        return (f"{o.network} <-> {o.service} ({o.relay}, {o.datapath}): {c.net_to_service.frames} frames in, "
                f"{c.service_to_net.frames} out, {drops} dropped")

    def _collect_queue_drops(self, net: PacketSocket) -> None:
        try:
            _, drops = net.take_statistics()
        except OSError:
            return
        if drops:
            self.counters.net_to_service.drop(DropReason.QUEUE_OVERFLOW, drops)

    def _fail(self, why: str) -> None:
        if self._fatal is None:
            self._fatal = why
        self._wake.set()

    def _signals(self) -> ExitStack:
        def stop(signum: int, _frame: object) -> None:
            self._stop_requested = True
            self._wake.set()

        def dump(signum: int, _frame: object) -> None:
            self._dump_requested = True
            self._wake.set()

        stack = ExitStack()
        for signum, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGUSR1, dump)):
            stack.callback(signal.signal, signum, signal.signal(signum, handler))
        return stack
