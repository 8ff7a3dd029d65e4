"""Faults while traffic flows: links down, carrier lost, MTU changed, interfaces deleted, SIGKILL."""

from __future__ import annotations

import json
import signal
import sys
import time

from .conftest import EoeLab, receive, receive_all
from .frames import eoe_frame, inner_frame

UPSTREAM = dict(op_code=8, downstream=0, dst="06:00:00:00:00:f8", src="06:00:00:00:00:78")


def link(eoe_lab: EoeLab, name: str) -> dict:
    return json.loads(eoe_lab.ip("-j", "-d", "link", "show", name))[0]


def flows_within(eoe_lab: EoeLab, seconds: float = 1.0, both: bool = True) -> float:
    """Time until a frame passes net -> TAP (and TAP -> net); fails after `seconds`."""
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    t0 = time.monotonic()
    seed = 0
    while time.monotonic() - t0 < seconds:
        seed += 1
        inner = inner_frame(100, seed=seed)
        peer.send(eoe_frame(inner))
        if inner in receive_all(tap, 0.05):
            break
    else:
        raise AssertionError(f"net -> TAP did not flow again within {seconds}s")
    if both:
        while time.monotonic() - t0 < seconds:
            seed += 1
            inner = inner_frame(100, seed=seed)
            tap.send(inner)
            if eoe_frame(inner, **UPSTREAM) in receive_all(peer, 0.05):
                break
        else:
            raise AssertionError(f"TAP -> net did not flow again within {seconds}s")
    return time.monotonic() - t0


def test_carrier_lost_and_regained(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    tap = eoe_lab.socket("tap0")
    eoe_lab.ip("link", "set", "peer0", "down")
    for _ in range(20):
        tap.send(inner_frame(100))
    time.sleep(0.2)
    assert fwd.proc.poll() is None
    eoe_lab.ip("link", "set", "peer0", "up")
    eoe_lab.lab.wait_operstate(eoe_lab.ns, "net0", "UP")
    flows_within(eoe_lab)
    assert fwd.stop() == 0
    assert "service to net" in fwd.output


def test_tap_mtu_follows_the_network_mtu_unless_pinned(eoe_lab: EoeLab):
    eoe_lab.start()
    eoe_lab.ip("link", "set", "net0", "mtu", "9000")
    deadline = time.monotonic() + 2
    while link(eoe_lab, "tap0")["mtu"] != 9000 - 18 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link(eoe_lab, "tap0")["mtu"] == 8982
    eoe_lab.ip("link", "set", "peer0", "mtu", "9000")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    big = inner_frame(8982 + 14, seed=7)
    tap.send(big)
    assert receive(peer) == eoe_frame(big, **UPSTREAM)
    assert any("MTU is now 9000; tap0 MTU set to 8982" in e for e in eoe_lab.forwarder.errors)


def test_pinned_tap_mtu_stays(eoe_lab: EoeLab):
    eoe_lab.start("--tap-mtu", "1400")
    eoe_lab.ip("link", "set", "net0", "mtu", "9000")
    time.sleep(0.5)
    assert link(eoe_lab, "tap0")["mtu"] == 1400


def test_network_interface_deleted_and_recreated_is_rebound(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    flows_within(eoe_lab)
    eoe_lab.ip("link", "del", "net0")
    time.sleep(0.3)
    assert fwd.proc.poll() is None
    eoe_lab.ip("link", "add", "net0", "type", "veth", "peer", "name", "peer0")
    eoe_lab.ip("link", "set", "net0", "up")
    eoe_lab.ip("link", "set", "peer0", "up")
    eoe_lab.lab.wait_operstate(eoe_lab.ns, "net0", "UP")
    assert flows_within(eoe_lab, 1.0) < 1.0
    net = link(eoe_lab, "net0")
    assert "NOARP" in net["flags"] and net["promiscuity"] >= 1
    assert any("net0 was deleted; waiting" in e for e in fwd.errors)
    assert any("net0 is back" in e for e in fwd.errors)
    assert fwd.stop() == 0
    assert "NOARP" not in link(eoe_lab, "net0")["flags"]


def test_network_interface_that_does_not_come_back_ends_it(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--wait-link", "1")
    eoe_lab.ip("link", "del", "net0")
    assert fwd.proc.wait(5) == 69
    assert any("net0 did not come back within 1 s" in e for e in fwd.errors)
    assert eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0


def test_tap_deleted_from_outside_is_recreated(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    eoe_lab.ip("link", "del", "tap0")
    deadline = time.monotonic() + 2
    while eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0:
        assert time.monotonic() < deadline, fwd.output
        time.sleep(0.05)
    time.sleep(0.2)
    tap = link(eoe_lab, "tap0")
    assert "UP" in tap["flags"] and tap["mtu"] == 1482
    assert fwd.proc.poll() is None
    assert flows_within(eoe_lab) < 1.0
    assert any("tap0 was deleted; restarting the datapath" in e for e in fwd.errors)
    assert fwd.stop() == 0
    assert eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0


def test_sigkill_then_restart_restores_noarp_and_works(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    assert "NOARP" in link(eoe_lab, "net0")["flags"]
    fwd.signal(signal.SIGKILL)
    fwd.proc.wait(5)
    deadline = time.monotonic() + 2  # worker processes of a multi-process datapath die a moment later
    while link(eoe_lab, "net0").get("promiscuity", 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    net = link(eoe_lab, "net0")
    assert net.get("promiscuity", 0) == 0  # socket-scoped: released by the kernel with the socket
    assert "NOARP" in net["flags"]  # the flag is what a crash leaves behind
    fwd = eoe_lab.start()
    assert any("restored ARP on net0, left disabled by eoe_filter pid" in e for e in fwd.errors)
    flows_within(eoe_lab)
    assert fwd.stop() == 0
    assert "NOARP" not in link(eoe_lab, "net0")["flags"]


def test_sigkill_then_cleanup_restores_noarp(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    fwd.signal(signal.SIGKILL)
    fwd.proc.wait(5)
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "cleanup"])
    assert out.returncode == 0
    assert "net0: ARP resolution restored" in out.stdout
    assert "NOARP" not in link(eoe_lab, "net0")["flags"]
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "cleanup"])
    assert "nothing to clean up" in out.stdout


def test_an_interface_that_had_noarp_before_keeps_it(eoe_lab: EoeLab):
    eoe_lab.ip("link", "set", "net0", "arp", "off")
    fwd = eoe_lab.start()
    fwd.signal(signal.SIGKILL)
    fwd.proc.wait(5)
    fwd = eoe_lab.start()
    assert fwd.stop() == 0
    assert "NOARP" in link(eoe_lab, "net0")["flags"]
