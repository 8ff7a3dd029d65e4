"""Throwaway network namespaces for the demo, the benchmark and the system tests.

Everything a Lab makes (namespaces, the veth pairs in them, the processes it
started) is removed by close(), also after an error or Ctrl-C; processes are
stopped by the PID we started, never by name.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pyroute2 import IPRoute, netns

from .state import STATE_ROOT

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block in namespace `name` (this thread only); sockets made here stay in it."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def enter_netns(name: str) -> None:
    """Move this thread into namespace `name` for good: a child process that works only there
    (os.setns needs Python 3.12)."""
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    finally:
        os.close(target)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Lab:
    def __init__(self, prefix: str = "eoelab") -> None:
        self.tag = f"{prefix}-{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, role: str) -> str:
        """A new namespace with loopback up and IPv6 off (no router solicitations in our captures)."""
        name = f"{self.tag}-{role}"
        netns.create(name)
        self.namespaces.append(name)
        with in_netns(name):
            for conf in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                    f.write("1")
        with self.ipr(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    def ipr(self, ns: str) -> IPRoute:
        return IPRoute(netns=ns)

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int = 1500) -> None:
        """A veth pair from ns_a to ns_b, both ends up."""
        with self.ipr(ns_a) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
            ipr.link("set", index=ipr.link_lookup(ifname=name_a)[0], state="up", mtu=mtu)
        with self.ipr(ns_b) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=name_b)[0], state="up", mtu=mtu)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            self.wait_operstate(ns, name, "UP")

    def wait_operstate(self, ns: str, name: str, state: str, timeout: float = 5.0) -> None:
        """Wait for the kernel's link watch: a veth drops frames until it has activated the link."""
        deadline = time.monotonic() + timeout
        with self.ipr(ns) as ipr:
            while ipr.get_links(ifname=name)[0].get("operstate") != state:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} in {ns} did not become {state}")
                time.sleep(0.01)

    def command(self, ns: str, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def run(self, ns: str, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(ns, args), text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]

    def start(self, ns: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command(ns, args), **kwargs)  # type: ignore[call-overload]
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        for name in reversed(self.namespaces):
            try:
                # a forwarder SIGKILLed in it left crash-recovery records; a later namespace may reuse the inode
                shutil.rmtree(STATE_ROOT / f"netns-{os.stat(f'/run/netns/{name}').st_ino}", ignore_errors=True)
                netns.remove(name)
            except OSError:
                pass
        self.namespaces.clear()
