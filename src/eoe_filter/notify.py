"""Tell a supervisor how the forwarder is doing (the sd_notify datagram protocol).

systemd (``Type=notify``) and compatible supervisors pass ``NOTIFY_SOCKET``
in the environment. The forwarder answers with newline-separated
``KEY=VALUE`` datagrams: ``READY=1`` once traffic can flow, ``WATCHDOG=1`` as a
liveness ping, ``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` on
shutdown. Protocol: sd_notify(3), sd_watchdog_enabled(3).

This is the stdlib only on purpose. libsystemd bindings would be a C
dependency for what is one ``sendto()``.

Rules this module keeps:

* No ``NOTIFY_SOCKET``: every method returns at once. The forwarder also runs
  by hand and under other supervisors.
* A send never raises. If the supervisor has gone away, the forwarder must
  keep forwarding. The first failure is logged at debug level. Later failures
  are not logged, so a watchdog timer cannot flood the log.
* Only the process that made the Notifier sends. Forked workers inherit the
  object, but the unit uses ``NotifyAccess=main`` and systemd would reject
  their messages and log a warning for each. So in a child every call does
  nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify client. Build it with :meth:`from_env`."""

    def __init__(
        self,
        address: str | None,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._pid = os.getpid()
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._failed = False
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        if address[0] == "@":
            # Abstract namespace: systemd writes the leading NUL as '@'.
            self._addr = "\0" + address[1:]
        elif address[0] == "/":
            self._addr = address
        else:
            # libsystemd rejects relative paths, and we do not speak vsock:.
            log.debug("NOTIFY_SOCKET=%r not supported; notifications off", address)
            return
        # Keep one socket open for the life of the process. It is not
        # connect()ed: sendto() looks up the path on every call, so it still
        # works if the supervisor re-creates its socket. It is non-blocking
        # because a wedged supervisor must not stall the datapath; losing a
        # datagram is the lesser harm.
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:  # e.g. EMFILE: run without notifications rather than not at all
            log.debug("cannot create sd_notify socket: %s", exc)
            return
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        *environ* defaults to :data:`os.environ` and can be replaced in tests.
        """
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        """True if a supervisor is listening (in this process)."""
        return self._sock is not None and os.getpid() == self._pid

    def notify(self, message: str) -> bool:
        """Send one raw datagram. Returns True if it was handed to the kernel."""
        if self._sock is None or os.getpid() != self._pid:
            return False
        try:
            self._sock.sendto(message.encode(), self._addr)
            return True
        except OSError as exc:  # ENOENT/ECONNREFUSED: supervisor gone; EAGAIN: it is stuck
            if not self._failed:
                self._failed = True
                log.debug("sd_notify to %r failed: %s (further failures not logged)", self._addr, exc)
            return False

    def ready(self) -> bool:
        """Startup is complete. systemd starts dependent units after this."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """One-line status for ``systemctl status``."""
        # A newline would start a new KEY=VALUE field, so text could forge
        # READY=1. systemd ignores a datagram with an embedded NUL.
        return self.notify("STATUS=" + " ".join(text.replace("\0", " ").splitlines()))

    def watchdog(self) -> bool:
        """Liveness ping. Send it from the loop that does the work, so a hung loop misses pings."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun. systemd then knows the exit that follows is planned."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` calls, or None if no watchdog is wanted.

        This is HALF of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises,
        so a caller can use it as the ping period without more arithmetic.
        Returns None when ``WATCHDOG_USEC`` is missing, not a positive integer,
        or meant for another process (``WATCHDOG_PID`` is set and is not our
        pid; this is always the case in a forked worker). It also returns None
        when there is no socket to ping.
        """
        if not self.enabled:
            return None
        usec = _uint(self._watchdog_usec)
        if self._watchdog_pid and _uint(self._watchdog_pid) != os.getpid():
            return None
        if not usec or usec >= 2**64 - 1:  # 0 and USEC_INFINITY mean "no watchdog"
            return None
        return usec / 2_000_000

    def close(self) -> None:
        """Close the socket. Later calls do nothing."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"Notifier(address={self._addr!r})"


def _uint(value: str | None) -> int | None:
    """Parse a plain decimal integer, as libsystemd does.

    int() alone would also accept '+5', ' 5' and '1_000'.
    """
    if value and value.isascii() and value.isdigit():
        return int(value)
    if value:
        log.debug("ignoring non-numeric watchdog variable %r", value)
    return None
