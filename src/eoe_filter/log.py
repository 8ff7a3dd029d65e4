"""Logging as the original did it: bare lines on stdout, errors on stderr, or syslog's daemon facility.

Each line is written out as it happens, even into a pipe or a file, so a
supervisor sees progress at once.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

LOGGER_NAME = "eoe_filter"


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


SYSLOG_SOCKET = "/dev/log"


def setup(*, syslog: bool = False, debug: int = 0, syslog_socket: str = SYSLOG_SOCKET) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    if syslog and os.path.exists(syslog_socket):
        handler = logging.handlers.SysLogHandler(syslog_socket, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{LOGGER_NAME}[%(process)d]: %(message)s"))
        log.addHandler(handler)
        return log
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter(f"{LOGGER_NAME}: %(message)s"))
    log.addHandler(out)
    log.addHandler(err)
    if syslog:
        log.warning("no syslog socket at %s; logging to stdout/stderr", syslog_socket)
    return log


class RateLimited:
    """At most one line per key per interval, with a count of what was held back."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def warning(self, key: object, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        self._log.warning("%s%s", message, f" ({held} more since the last report)" if held else "")
