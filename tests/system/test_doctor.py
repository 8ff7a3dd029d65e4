"""`eoe_filter doctor`: each broken condition made for real in a namespace, and named in one line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from eoe_filter import control
from eoe_filter.lab import Lab, in_netns

from .conftest import EoeLab, start_forwarder
from .frames import eoe_frame, inner_frame

DOCTOR = [sys.executable, "-m", "eoe_filter", "doctor"]
HOLD_TAP = ("import sys, time\n"
            "from eoe_filter.link.tap import attach, open_clone\n"
            "attach(open_clone(), sys.argv[1], existed=False)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n")


def doctor(eoe_lab: EoeLab, *args: str, service: str = "tap0", relay: str = "-E",
           wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """doctor -n net0 -t SERVICE RELAY in the lab's namespace, `wrap` (e.g. setpriv) in front of python."""
    return eoe_lab.lab.run(eoe_lab.ns, [*wrap, *DOCTOR, "-n", "net0", "-t", service, relay, *args])


def lines(out: subprocess.CompletedProcess[str], level: str) -> list[str]:
    return [line[6:] for line in out.stdout.splitlines() if line.startswith(level)]


def assert_fails_with(out: subprocess.CompletedProcess[str], text: str) -> str:
    """Exit 1 and a FAIL line containing `text`, with its fix on the same line."""
    assert out.returncode == 1, out.stdout + out.stderr
    found = [line for line in lines(out, "FAIL  ") if text in line]
    assert found, f"no FAIL line with {text!r}:\n{out.stdout}{out.stderr}"
    assert "fix:" in found[0]
    return found[0]


def counters(eoe_lab: EoeLab, service: str = "tap0") -> dict:
    with in_netns(eoe_lab.ns):
        snap = control.query(service)
    assert snap is not None
    return snap["counters"]


def wait_tap_down_drops(eoe_lab: EoeLab, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while counters(eoe_lab)["net_to_service"]["drops"]["tap_down"] < n:
        assert time.monotonic() < deadline, counters(eoe_lab)
        time.sleep(0.05)


def hold_tap(eoe_lab: EoeLab, name: str = "tap0") -> subprocess.Popen[str]:
    """Another process that attaches TAP `name` (creating it if needed) and keeps it; the Lab stops it."""
    proc = eoe_lab.lab.start(eoe_lab.ns, [sys.executable, "-c", HOLD_TAP, name], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# --- healthy ------------------------------------------------------------------------------------

def test_healthy_running_forwarder_is_exit_0(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    out = doctor(eoe_lab)
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines(out, "FAIL") == []
    assert f"TAP tap0 is up, attached by eoe_filter pid {fwd.proc.pid}" in lines(out, "ok    ")
    assert out.stdout.splitlines()[0] == "ok    tun: /dev/net/tun is usable"
    assert "\033" not in out.stdout


def test_past_drops_while_the_tap_was_down_are_information(eoe_lab: EoeLab):
    eoe_lab.start()
    peer = eoe_lab.socket("peer0")
    eoe_lab.ip("link", "set", "tap0", "down")
    for _ in range(7):
        peer.send(eoe_frame(inner_frame(100)))
    wait_tap_down_drops(eoe_lab, 7)
    eoe_lab.ip("link", "set", "tap0", "up")
    out = doctor(eoe_lab)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "net -> service: 7 frames dropped (tap down) because tap0 was down; none during this check" \
        in lines(out, "info  ")


def test_healthy_dhcp_relay_is_exit_0(eoe_lab: EoeLab):
    eoe_lab.ip("link", "add", "svc0", "type", "veth", "peer", "name", "svcpeer0")
    eoe_lab.ip("link", "set", "svcpeer0", "up")
    eoe_lab.ip("link", "set", "svc0", "up")
    eoe_lab.lab.wait_operstate(eoe_lab.ns, "svc0", "UP")
    start_forwarder(eoe_lab.lab, eoe_lab.ns, "-n", "net0", "-t", "svc0", "-V", "-F")
    out = doctor(eoe_lab, service="svc0", relay="-V")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tun" not in out.stdout and "service interface svc0 is up with carrier, MTU 1500" in out.stdout


# --- /dev/net/tun and privileges ----------------------------------------------------------------

def in_private_dev_net(eoe_lab: EoeLab, setup: str) -> subprocess.CompletedProcess[str]:
    """doctor in a private mount namespace whose /dev/net is a fresh tmpfs, prepared by `setup`."""
    script = f"mount -t tmpfs -o nodev,mode=755 tmpfs /dev/net && {setup} exec \"$@\""
    command = eoe_lab.lab.command(eoe_lab.ns, [*DOCTOR, "-n", "net0", "-t", "tap0", "-E"])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command],
                          check=False, text=True, capture_output=True)


def test_dev_net_tun_missing(eoe_lab: EoeLab):
    line = assert_fails_with(in_private_dev_net(eoe_lab, ""), "/dev/net/tun does not exist")
    assert "modprobe tun" in line


def test_dev_net_tun_not_accessible(eoe_lab: EoeLab):
    out = in_private_dev_net(eoe_lab, "mknod /dev/net/tun c 10 200 && chmod 666 /dev/net/tun &&")
    assert "EACCES" in assert_fails_with(out, "/dev/net/tun is not accessible")


def test_missing_privileges(eoe_lab: EoeLab):
    out = doctor(eoe_lab, wrap=("setpriv", "--bounding-set", "-net_admin,-net_raw", "--inh-caps",
                                "-net_admin,-net_raw"))
    line = assert_fails_with(out, "privileges: CAP_NET_ADMIN and CAP_NET_RAW missing")
    assert "AmbientCapabilities" in line


# --- the network interface ----------------------------------------------------------------------

def test_network_interface_missing(eoe_lab: EoeLab):
    out = eoe_lab.lab.run(eoe_lab.ns, [*DOCTOR, "-n", "nosuch0", "-t", "tap0", "-E"])
    assert_fails_with(out, "network interface nosuch0 does not exist")


def test_network_interface_down(eoe_lab: EoeLab):
    eoe_lab.ip("link", "set", "net0", "down")
    assert "ip link set net0 up" in assert_fails_with(doctor(eoe_lab), "network interface net0 is down")


def test_network_interface_without_carrier(eoe_lab: EoeLab):
    eoe_lab.ip("link", "set", "peer0", "down")
    assert_fails_with(doctor(eoe_lab), "network interface net0 has no carrier")


def test_network_interface_used_by_another_forwarder(eoe_lab: EoeLab):
    other = eoe_lab.start_on("net0", "tap1")
    assert_fails_with(doctor(eoe_lab), f"net0 is already forwarded by eoe_filter pid {other.proc.pid} for tap1")


# --- the TAP --------------------------------------------------------------------------------------

def test_tap_missing_and_no_forwarder(eoe_lab: EoeLab):
    out = doctor(eoe_lab)
    assert "start eoe_filter -n net0 -t tap0 -E" in assert_fails_with(out, "TAP tap0 does not exist")
    assert_fails_with(out, "no eoe_filter is running for tap0")


def test_tap_down_under_a_running_forwarder(eoe_lab: EoeLab):
    eoe_lab.start()
    eoe_lab.ip("link", "set", "tap0", "down")
    line = assert_fails_with(doctor(eoe_lab), "TAP tap0 is down: writes to it fail with EIO")
    assert "fix: ip link set tap0 up" in line


def test_drops_happening_now_are_a_problem(eoe_lab: EoeLab):
    eoe_lab.start()
    peer = eoe_lab.socket("peer0")
    eoe_lab.ip("link", "set", "tap0", "down")
    stop = threading.Event()

    def flood() -> None:
        for _ in range(400):  # bounded: at most ~8 s of 50 frames/s inside the namespace
            if stop.wait(0.02):
                return
            peer.send(eoe_frame(inner_frame(100)))

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        wait_tap_down_drops(eoe_lab, 1)
        out = doctor(eoe_lab)
    finally:
        stop.set()
        sender.join()
    line = assert_fails_with(out, "net -> service: dropping now")
    assert "(tap down) because tap0 was down; fix: ip link set tap0 up" in line


def test_tap_attached_by_another_process_and_not_persistent(eoe_lab: EoeLab):
    holder = hold_tap(eoe_lab)
    out = doctor(eoe_lab)
    assert "EBUSY" in assert_fails_with(out, f"TAP tap0 is attached by another process: pid {holder.pid} (")
    assert_fails_with(out, f"TAP tap0 is not persistent and no eoe_filter holds it: it vanishes when pid {holder.pid}")


def test_persistent_tap_attached_by_another_process(eoe_lab: EoeLab):
    eoe_lab.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
    holder = hold_tap(eoe_lab)
    out = doctor(eoe_lab)
    assert "EBUSY" in assert_fails_with(out, f"TAP tap0 is attached by another process: pid {holder.pid} (")
    assert not any("not persistent" in line for line in lines(out, "FAIL  "))


def test_free_persistent_tap_before_start(eoe_lab: EoeLab):
    eoe_lab.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
    out = doctor(eoe_lab)
    assert "TAP tap0 is persistent and free: eoe_filter can attach it" in lines(out, "ok    ")
    assert "TAP tap0 is down: eoe_filter brings it up when it starts" in lines(out, "info  ")
    assert len(lines(out, "FAIL  ")) == 1  # only: no forwarder is running


def test_service_name_taken_by_something_else(eoe_lab: EoeLab):
    eoe_lab.ip("link", "add", "tap0", "type", "veth", "peer", "name", "tap0peer")
    assert_fails_with(doctor(eoe_lab), "tap0 exists and is not a TAP device (kind veth)")


def test_tap_mtu_larger_than_network_mtu_minus_18(eoe_lab: EoeLab):
    eoe_lab.start()
    eoe_lab.ip("link", "set", "tap0", "mtu", "1500")
    out = doctor(eoe_lab)
    line = assert_fails_with(out, "TAP tap0 MTU 1500 is larger than net0 MTU 1500 - 18 = 1482")
    assert "ip link set tap0 mtu 1482" in line
    assert any("--tap-mtu" in info for info in lines(out, "info  "))


# --- the dhcp relay's service interface -----------------------------------------------------------

@pytest.mark.parametrize("breakage, expected", [
    ((), "service interface svc0 does not exist"),
    (("svc0", "down"), "service interface svc0 is down"),
    (("svcpeer0", "down"), "service interface svc0 has no carrier"),
])
def test_dhcp_service_interface_problems(eoe_lab: EoeLab, breakage: tuple[str, ...], expected: str):
    if breakage:
        eoe_lab.ip("link", "add", "svc0", "type", "veth", "peer", "name", "svcpeer0")
        eoe_lab.ip("link", "set", "svc0", "up")
        eoe_lab.ip("link", "set", "svcpeer0", "up")
        eoe_lab.ip("link", "set", breakage[0], breakage[1])
    assert_fails_with(doctor(eoe_lab, service="svc0", relay="-V"), expected)


# --- NIC settings, through ethtool's netlink interface --------------------------------------------

def ethtool_k(eoe_lab: EoeLab, feature: str) -> str:
    """`ethtool -k net0`'s own view of one feature, e.g. 'off [fixed]'."""
    out = eoe_lab.lab.run(eoe_lab.ns, ["ethtool", "-k", "net0"])
    assert out.returncode == 0, out.stderr
    return next(line.split(": ", 1)[1].strip() for line in out.stdout.splitlines()
                if line.startswith(feature + ":"))


@pytest.mark.parametrize("state", ["off", "on"])
def test_vlan_offload_state_as_ethtool_sees_it(eoe_lab: EoeLab, state: str):
    eoe_lab.lab.run(eoe_lab.ns, ["ethtool", "-K", "net0", "rxvlan", state])
    assert ethtool_k(eoe_lab, "rx-vlan-offload") == state
    out = doctor(eoe_lab)
    assert any(line.startswith(f"net0 rx-vlan-offload {state}:") for line in lines(out, "info  ")), out.stdout
    filtering = ethtool_k(eoe_lab, "rx-vlan-filter")
    assert f"net0 passes every VLAN (rx-vlan-filter {filtering})" in lines(out, "ok    ")


def test_vlan_filter_without_vid_4094(eoe_lab: EoeLab):
    eoe_lab.lab.run(eoe_lab.ns, ["ethtool", "-K", "net0", "rx-vlan-filter", "on"])
    if ethtool_k(eoe_lab, "rx-vlan-filter") != "on":
        pytest.skip("veth's rx-vlan-filter is 'off [fixed]' (NETIF_F_HW_VLAN_CTAG_FILTER is not in its "
                    "hw_features): the broken condition needs a NIC that filters; the rule is unit-tested")
    line = assert_fails_with(doctor(eoe_lab), "VID 4094 is not among them")
    assert "type vlan id 4094" in line


# --- the forwarder --------------------------------------------------------------------------------

def test_no_forwarder_running_for_an_existing_tap(eoe_lab: EoeLab):
    eoe_lab.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
    assert_fails_with(doctor(eoe_lab), "no eoe_filter is running for tap0 in this network namespace")


def test_forwarder_on_another_network_interface(eoe_lab: EoeLab, lab: Lab):
    lab.veth(eoe_lab.ns, "net1", eoe_lab.ns, "peer1")
    fwd = eoe_lab.start_on("net1", "tap0")
    assert_fails_with(doctor(eoe_lab), f"the eoe_filter for tap0 (pid {fwd.proc.pid}) forwards to net1, not net0")
