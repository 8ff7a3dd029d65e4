"""Namespaces, veth pairs and forwarder processes for system tests; all torn down, even on failure."""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from eoe_filter.lab import Lab, in_netns
from eoe_filter.link import abi
from eoe_filter.link.packet_socket import wire_view

if os.geteuid() != 0:
    pytest.fail("system tests need root (network namespaces, TAP devices, raw sockets)", pytrace=False)

pytestmark = pytest.mark.system
UNDER_EBPF = os.environ.get("EOE_TEST_DATAPATH") == "ebpf"
USERSPACE_READY, KERNEL_READY = "service to net thread is waiting for data", "kernel datapath attached"
LAST_STARTUP_LINE = KERNEL_READY if UNDER_EBPF else USERSPACE_READY


def userspace_only(why: str) -> pytest.MarkDecorator:
    """Skip under the eBPF datapath a test of behaviour it documents as different (`why`)."""
    return pytest.mark.skipif(UNDER_EBPF, reason=f"eBPF datapath: {why}")


class Forwarder:
    """A forwarder process started by a test; its output is collected line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        for stream, sink in ((proc.stdout, self.lines), (proc.stderr, self.errors)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines + self.errors):
            if self.proc.poll() is not None and self._new.empty():
                time.sleep(0.2)
                if not any(text in line for line in self.lines + self.errors):
                    raise AssertionError(f"forwarder exited ({self.proc.returncode}) before {text!r}:\n"
                                         + "\n".join(self.lines + self.errors))
            try:
                self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s:\n" + "\n".join(self.lines + self.errors))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        time.sleep(0.1)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines + self.errors)


def start_forwarder(lab: Lab, ns: str, *args: str, ready: bool = True) -> Forwarder:
    """Start a forwarder; EOE_TEST_DATAPATH runs the whole suite over another datapath.

    A test that names its datapath itself keeps it.
    """
    if os.environ.get("EOE_TEST_DATAPATH") and "--datapath" not in args:
        args = (*args, "--datapath", os.environ["EOE_TEST_DATAPATH"])
    datapath = args[args.index("--datapath") + 1] if "--datapath" in args else ""
    proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", *args],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fwd = Forwarder(proc)  # type: ignore[arg-type]
    if ready:
        fwd.wait_for(KERNEL_READY if datapath == "ebpf" else USERSPACE_READY)
    return fwd


def raw_socket(ns: str, ifname: str) -> socket.socket:
    """A test's own raw socket: sees what arrives on `ifname`, not what it sends itself."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(abi.SOL_PACKET, abi.PACKET_AUXDATA, 1)
        sock.bind((ifname, abi.ETH_P_ALL))
    return sock


def receive(sock: socket.socket, timeout: float = 2.0) -> bytes | None:
    """The next frame's wire view, or None after `timeout`."""
    sock.settimeout(timeout)
    while True:
        try:
            return wire_view(sock)
        except TimeoutError:
            return None
        except OSError as e:  # the kernel reports a past link-down once on every socket bound to the link
            if e.errno != errno.ENETDOWN:
                raise


def receive_all(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    frames = []
    while (frame := receive(sock, quiet)) is not None:
        frames.append(frame)
    return frames


@dataclass
class EoeLab:
    """A namespace with veth net0 <-> peer0 and a forwarder on net0 with TAP tap0."""

    lab: Lab
    ns: str
    forwarder: Forwarder | None = None
    sockets: list[socket.socket] = field(default_factory=list)

    def start(self, *args: str, ready: bool = True) -> Forwarder:
        self.forwarder = self.start_on("net0", "tap0", *args, ready=ready)
        return self.forwarder

    def start_on(self, net: str, tap: str, *args: str, ready: bool = True) -> Forwarder:
        return start_forwarder(self.lab, self.ns, "-n", net, "-t", tap, "-E", *args, ready=ready)

    def socket(self, ifname: str) -> socket.socket:
        sock = raw_socket(self.ns, ifname)
        self.sockets.append(sock)
        return sock

    def ip(self, *args: str) -> str:
        out = self.lab.run(self.ns, ["ip", *args])
        assert out.returncode == 0, out.stderr
        return out.stdout

    def recreate_network(self) -> None:
        """Delete net0 and make it again, as a board's driver reload does, and wait until it is up."""
        self.ip("link", "del", "net0")
        self.ip("link", "add", "net0", "type", "veth", "peer", "name", "peer0")
        self.ip("link", "set", "net0", "up")
        self.ip("link", "set", "peer0", "up")
        self.lab.wait_operstate(self.ns, "net0", "UP")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("efsys") as made:
        yield made


@pytest.fixture
def eoe_lab(lab: Lab) -> Iterator[EoeLab]:
    ns = lab.netns("board")
    lab.veth(ns, "net0", ns, "peer0")
    made = EoeLab(lab, ns)
    try:
        yield made
    finally:
        made.close()
