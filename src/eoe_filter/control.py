"""The control endpoint of a running forwarder: live counters for `eoe_filter stats` and `doctor`.

Each forwarder listens on an abstract Unix socket named after its service
interface. Abstract names are private to the network namespace (the same
TAP name in two namespaces never collides), vanish with the process (a
killed forwarder leaves nothing stale behind), and double as a lock: a
second forwarder for the same TAP or network interface in the same
namespace cannot bind them. Only root (or our own user) may read: the
server checks the peer's credentials.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Callable

PREFIX = "eoe_filter/"
_UCRED = struct.Struct("=iII")  # NATIVE struct ucred: pid, uid, gid
_SO_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket


class AlreadyRunning(Exception):
    """Another forwarder holds this TAP or network interface in this namespace."""


def service_endpoint(service: str) -> str:
    return f"{PREFIX}service/{service}"


def network_lock(network: str) -> str:
    return f"{PREFIX}network/{network}"


def _abstract(name: str) -> bytes:
    return b"\0" + name.encode()


class ControlServer:
    """Claims the names at start-up; serves JSON snapshots from a thread once started."""

    def __init__(self, service: str, network: str) -> None:
        self._listener = self._claim(service_endpoint(service), f"service interface {service}")
        try:
            self._lock = self._claim(network_lock(network), f"network interface {network}")
        except AlreadyRunning:
            self._listener.close()
            raise
        self._thread: threading.Thread | None = None

    @staticmethod
    def _claim(name: str, what: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(_abstract(name))
        except OSError:
            sock.close()
            raise AlreadyRunning(f"another eoe_filter already forwards {what} in this network namespace") from None
        return sock

    def serve(self, snapshot: Callable[[], dict[str, object]]) -> None:
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._loop, args=(snapshot,), name="control", daemon=True)
        self._thread.start()

    def _loop(self, snapshot: Callable[[], dict[str, object]]) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed: we are stopping
            with conn:
                try:
                    _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                    if uid not in (0, os.geteuid()):
                        conn.sendall(b'{"error": "permission denied: only root may read the counters"}\n')
                        continue
                    conn.sendall(json.dumps(snapshot()).encode() + b"\n")
                except OSError:
                    continue

    def close(self) -> None:
        for sock in (self._listener, self._lock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def running_services() -> list[str]:
    """The service interfaces of the forwarders listening in this network namespace."""
    found = []
    with open("/proc/net/unix") as table:
        next(table)
        for row in table:
            fields = row.split()
            listening = len(fields) >= 8 and int(fields[3], 16) & _SO_ACCEPTCON
            if listening and fields[7].startswith("@" + PREFIX + "service/"):
                found.append(fields[7][len("@" + PREFIX + "service/"):])
    return sorted(set(found))


def query(service: str, timeout: float = 1.0) -> dict[str, object] | None:
    """The snapshot of the forwarder serving `service`, or None if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(_abstract(service_endpoint(service)))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            return None
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    if "error" in answer:
        raise PermissionError(answer["error"])
    return answer
