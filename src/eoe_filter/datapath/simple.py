"""The reference datapath: one thread per direction, one receive and one send per frame.

Ports are non-blocking; a loop drains its source until it would block,
then sleeps in poll() on the source and the stop pipe, so an idle
forwarder costs no CPU and stops at once.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from ..counters import DirectionCounters
from ..link.packet_socket import RX_HEADROOM
from ..log import RateLimited
from ..relays.base import Port
from ..wire.drops import DropReason
from ..wire.eoe import BUFFER_SIZE
from ..wire.hexdump import hexdump
from . import DatapathContext, log_creating, log_waiting
from .errors import MAYBE_GONE, send_drop_reason

EditFn = Callable[[bytearray, int, int], "tuple[int, int] | DropReason"]
OnFatal = Callable[[str], None]


class Direction(threading.Thread):
    def __init__(self, name: str, src: Port, dst: Port, edit: EditFn, headroom: int,
                 counters: DirectionCounters, stop_fd: int, on_fatal: OnFatal,
                 log: logging.Logger, debug: int) -> None:
        super().__init__(name=name, daemon=True)
        self.src, self.dst, self.edit = src, dst, edit
        self.at = headroom + RX_HEADROOM
        self.counters = counters
        self.stop_fd = stop_fd
        self.on_fatal = on_fatal
        self.log = log
        self.debug = debug
        self.limited = RateLimited(log)
        self.stopping = False
        """Set by the control thread; checked per frame so a flood cannot keep the loop from stopping."""

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug must end the service loudly, not leave a half-dead forwarder
            self.log.exception("%s loop failed", self.name)
            self.on_fatal(f"{self.name} loop failed: {e}")

    def _loop(self) -> None:
        src, dst, edit, counters, at, debug = self.src, self.dst, self.edit, self.counters, self.at, self.debug
        buf = bytearray(at + BUFFER_SIZE)
        view = memoryview(buf)
        rx = view[at:]
        poller = select.poll()
        poller.register(src.fileno(), select.POLLIN)
        poller.register(self.stop_fd, select.POLLIN)
        while not self.stopping:
            try:
                start, end = src.receive_into(buf, rx, at)
            except BlockingIOError:
                if any(fd == self.stop_fd for fd, _ in poller.poll()):
                    return
                continue
            except InterruptedError:
                continue
            except OSError as e:
                if self._receive_failed(e):
                    return
                continue
            if end <= start:
                if end < 0:
                    counters.drop(DropReason.TRUNCATED)
                continue
            if debug:
                self._trace("received", view[start:end])
            result = edit(buf, start, end)
            if isinstance(result, DropReason):
                counters.drop(result)
                if debug:
                    self.log.debug("%s: dropped %d bytes: %s", self.name, end - start, result.label)
                continue
            start, end = result
            if debug > 1:
                self._trace("edited", view[start:end])
            try:
                dst.send(view[start:end])
            except InterruptedError:
                continue
            except OSError as e:
                if self._send_failed(e):
                    return
                continue
            counters.add(1, end - start)

    def _trace(self, what: str, frame: memoryview) -> None:
        self.log.debug("%s: %s %d bytes", self.name, what, len(frame))
        if self.debug > 1:
            self.log.debug("%s", hexdump(frame))

    def _receive_failed(self, e: OSError) -> bool:
        """Handle a receive error; True when the service is over."""
        if e.errno in MAYBE_GONE and self._gone(self.src):
            return True
        self.limited.warning(("rx", e.errno), f"{self.name}: receive failed: {os.strerror(e.errno or 0)}")
        return False

    def _send_failed(self, e: OSError) -> bool:
        reason = send_drop_reason(e.errno)
        self.counters.drop(reason)
        if e.errno in MAYBE_GONE and self._gone(self.dst):
            return True
        self.limited.warning(("tx", e.errno), f"{self.name}: frame dropped ({reason.label}): "
                             f"{os.strerror(e.errno or 0)}")
        return False

    def _gone(self, port: Port) -> bool:
        why = port.gone()
        if why is not None:
            self.on_fatal(why)
        return why is not None


class SimpleDatapath:
    """Two Direction threads and the pipe that stops them."""

    name = "simple"
    capabilities: frozenset[int] = frozenset()

    def __init__(self, ctx: DatapathContext) -> None:
        self.ctx = ctx
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        relay, c = ctx.relay, ctx.counters
        common = dict(stop_fd=self._stop_read, on_fatal=ctx.on_fatal, log=ctx.log, debug=ctx.debug)
        self.directions = [
            Direction("net to service", ctx.net, ctx.service, relay.net_to_service, 0, c.net_to_service, **common),
            Direction("service to net", ctx.service, ctx.net, relay.service_to_net, relay.service_headroom,
                      c.service_to_net, **common),
        ]

    def start(self) -> None:
        log_creating(self.ctx)
        for d in self.directions:
            d.start()
        log_waiting(self.ctx)

    def alive(self) -> bool:
        return all(d.is_alive() for d in self.directions)

    def stop(self, timeout: float = 2.0) -> None:
        for d in self.directions:
            d.stopping = True
        os.write(self._stop_write, b"x")
        for d in self.directions:
            if d.ident is not None:  # started
                d.join(timeout)
        os.close(self._stop_read)
        os.close(self._stop_write)
