"""The eoe relay on a real veth, where the kernel lifts the VLAN tag: bytes, filter, faults, clean-up."""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import sys
import time

import pytest

from eoe_filter.lab import in_netns
from eoe_filter.link import abi
from eoe_filter.wire.eoe import EoeHeader, encapsulate

from .conftest import (
    LAST_STARTUP_LINE,
    UNDER_EBPF,
    EoeLab,
    receive,
    receive_all,
    userspace_only,
)
from .frames import eoe_frame, inner_frame

ORIGINAL_STARTUP = [
    "Starting forwarder application: eoe_filter",
    "Enable EOE header handle.",
    "register EOE relay done",
    "Argument are: netItf: net0, serviceItf: tap0",
    "creating the socket for net0",
    r"The socket for net0 is (\d+)",
    "Setting net0 to promiscuous mode and disable ARP resolution",
    "net0 is now set in promiscuous mode and ARP resolution is disabled",
    "Getting interface index of net0",
    r"Binding socket (\d+) to net0",
    "Opening clone device /dev/net/tun",
    r"Socket of tap interface tap0 is (\d+)",
    r"Attaching socket (\d+) to tap interface tap0",
    "Tap interface tap0 is successfully created",
    "creating thread service to net",
    r"net_fd is (\d+) and service_fd is (\d+)",
    r"net to service thread is waiting for data on (\d+) to transmit on (\d+)\. Buffer size is 65557",
    r"service to net thread is waiting for data on (\d+) to transmit on (\d+)\. Buffer size is 65557",
]


def link(eoe_lab: EoeLab, name: str) -> dict:
    return json.loads(eoe_lab.ip("-j", "-d", "link", "show", name))[0]


def test_startup_lines_and_tap_up_with_room_for_the_header(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    expected = ORIGINAL_STARTUP
    if UNDER_EBPF:  # no forwarding threads: their four lines give way to one (LIMITS in datapath/ebpf.py)
        expected = ORIGINAL_STARTUP[:-4] + [r"kernel datapath attached \(eBPF\): .*tc ingress on net0 .*"]
    assert len(fwd.lines) == len(expected), fwd.output
    for line, pattern in zip(fwd.lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    tap = link(eoe_lab, "tap0")
    assert "UP" in tap["flags"]
    assert tap["mtu"] == 1500 - 18
    net = link(eoe_lab, "net0")
    assert "NOARP" in net["flags"] and net["promiscuity"] >= 1


@pytest.mark.parametrize("size", [14, 42, 64, 65, 1000, 1496])
def test_decapsulation_is_byte_exact(eoe_lab: EoeLab, size: int):
    eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(size, seed=size)
    frame = eoe_frame(inner)
    assert len(frame) <= 1500 + 18
    peer.send(frame)
    padded = inner + bytes(max(0, 64 - size))
    assert receive(tap) == padded


@pytest.mark.parametrize("size", [42, 60, 64, 1000, 1496])
def test_encapsulation_is_byte_exact(eoe_lab: EoeLab, size: int):
    eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(size, seed=size)
    tap.send(inner)
    expected = eoe_frame(inner, op_code=8, downstream=0, dst="06:00:00:00:00:f8", src="06:00:00:00:00:78")
    assert receive(peer) == expected


def test_configured_header_fields_are_used(eoe_lab: EoeLab):
    eoe_lab.start("--dmac", "02:11:22:33:44:55", "--smac", "02:66:77:88:99:aa", "--vid", "100",
                  "--pcp", "5", "--dei", "1", "--op-code", "3", "--downstream", "1", "--flag", "6",
                  "--itf", "0x1234", "--protocol-id", "0x42")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100)
    tap.send(inner)
    header = EoeHeader(dst=bytes.fromhex("021122334455"), src=bytes.fromhex("02667788 99aa".replace(" ", "")),
                       vid=100, pcp=5, dei=1, op_code=3, downstream=1, flag=6, itf=0x1234, protocol_id=0x42)
    assert receive(peer) == encapsulate(header, inner)


def test_frames_too_big_for_the_network_mtu_are_dropped_and_counted(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--tap-mtu", "1600")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    tap.send(inner_frame(1600))
    tap.send(inner_frame(100))
    assert receive(peer) == eoe_frame(inner_frame(100), op_code=8, downstream=0,
                                      dst="06:00:00:00:00:f8", src="06:00:00:00:00:78")
    assert fwd.stop() == 0
    assert re.search(r"service to net: 1 frames.*\n.*too big 1", fwd.output)


def test_filter_passes_op_code_1_and_drops_op_code_8_and_inner_control(eoe_lab: EoeLab):
    eoe_lab.start("-F")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    tagged_inner = inner_frame(100, ethertype=0x8100)
    ok = tagged_inner[:16] + b"\x08\x00" + tagged_inner[18:]
    control = tagged_inner[:16] + b"\x08\xab" + tagged_inner[18:]
    peer.send(eoe_frame(ok, op_code=8))
    peer.send(eoe_frame(control, op_code=1))
    peer.send(eoe_frame(ok, op_code=1))
    assert receive_all(tap) == [ok]


def test_without_filter_every_frame_of_36_bytes_or_more_is_decapsulated(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    arbitrary = bytes(range(12)) + b"\x88\xb5" + bytes(range(50, 72))  # 36 bytes, not even tagged
    peer.send(arbitrary)
    assert receive(tap) == arbitrary[22:]
    assert fwd.stop() == 0


def test_own_outgoing_frames_never_reach_the_tap(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    net, tap, peer = eoe_lab.socket("net0"), eoe_lab.socket("tap0"), eoe_lab.socket("peer0")
    net.send(eoe_frame(inner_frame(100)))  # the host itself sends on net0
    tap.send(inner_frame(100))  # and the forwarder's own encapsulated frame goes out of net0
    assert receive(peer) is not None
    assert receive_all(tap) == []
    fwd.stop()
    assert "net to service: 0 frames" in fwd.output


def test_garbage_does_not_kill_it(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    rng = random.Random(1234)
    runts = 0
    for _ in range(2000):
        size = rng.choice([rng.randint(14, 35), rng.randint(36, 1514)])
        runts += size < 36
        peer.send(rng.randbytes(12) + rng.randbytes(size - 12))
        if _ % 100 == 0:
            time.sleep(0.02)  # stay inside what the socket queue holds: this test is about content
    time.sleep(0.5)
    assert fwd.proc.poll() is None
    receive_all(tap, 0.2)
    inner = inner_frame(200, seed=9)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    assert fwd.stop() == 0
    assert f"runt {runts}" in fwd.output
    assert "queue overflow" not in fwd.output


def test_tap_down_drops_are_counted_and_frames_flow_again_after_up(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    eoe_lab.ip("link", "set", "tap0", "down")
    for _ in range(50):
        peer.send(eoe_frame(inner_frame(100)))
    time.sleep(0.3)
    assert fwd.proc.poll() is None
    assert "tap0" in eoe_lab.ip("link", "show", "tap0")
    eoe_lab.ip("link", "set", "tap0", "up")
    inner = inner_frame(120, seed=3)
    peer.send(eoe_frame(inner))
    assert inner in receive_all(tap)
    assert fwd.stop() == 0
    assert "tap down 50" in fwd.output
    assert len([e for e in fwd.errors if "tap down" in e]) == 1  # rate-limited, not once per frame


def test_sigterm_removes_the_tap_and_restores_the_flags(eoe_lab: EoeLab):
    before = link(eoe_lab, "net0")
    fwd = eoe_lab.start()
    t0 = time.monotonic()
    assert fwd.stop() == 0
    assert time.monotonic() - t0 < 2
    assert eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0
    after = link(eoe_lab, "net0")
    assert after["flags"] == before["flags"] and "NOARP" not in after["flags"]
    assert after.get("promiscuity", 0) == before.get("promiscuity", 0)
    assert "counters:" in fwd.output


def test_sigusr1_logs_the_counters(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    peer = eoe_lab.socket("peer0")
    peer.send(eoe_frame(inner_frame(100)))
    time.sleep(0.2)
    fwd.signal(signal.SIGUSR1)
    fwd.wait_for("net to service: 1 frames, 100 bytes forwarded")
    assert fwd.proc.poll() is None


def test_persist_keeps_the_tap_and_an_existing_tap_is_reused_and_left(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--persist")
    assert fwd.stop() == 0
    assert "tap0" in eoe_lab.ip("link", "show", "tap0")
    eoe_lab.ip("link", "set", "tap0", "down", "mtu", "1000")
    fwd = eoe_lab.start()
    tap = link(eoe_lab, "tap0")
    assert "UP" in tap["flags"] and tap["mtu"] == 1482
    assert fwd.stop() == 0
    assert "tap0" in eoe_lab.ip("link", "show", "tap0")


def test_a_tap_held_by_another_process_is_refused(eoe_lab: EoeLab):
    from eoe_filter.lab import in_netns
    from eoe_filter.link.tap import attach, open_clone
    with in_netns(eoe_lab.ns):
        holder = attach(open_clone(), "tap0", existed=False)  # like the C original still running
    try:
        out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "-n", "net0", "-t", "tap0", "-E"])
    finally:
        holder.close()
    assert out.returncode == 69
    errors = out.stderr.strip().splitlines()
    assert errors == ["eoe_filter: TAP tap0 is already attached to another process "
                      "(another forwarder still running?); refusing to share it"]
    assert "NOARP" not in link(eoe_lab, "net0")["flags"]


@pytest.mark.parametrize(("net", "tap", "what"), [("net0", "tap0", "service interface tap0"),
                                                  ("net0", "tap1", "network interface net0")])
def test_a_second_forwarder_on_the_same_interfaces_is_refused(eoe_lab: EoeLab, net: str, tap: str, what: str):
    eoe_lab.start()
    second = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "-n", net, "-t", tap, "-E"])
    assert second.returncode == 69
    assert second.stderr.strip().splitlines() == [
        f"eoe_filter: another eoe_filter already forwards {what} in this network namespace"]
    assert second.stdout == ""


def test_missing_network_interface_is_refused_before_anything_changes(eoe_lab: EoeLab):
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "-n", "eth9", "-t", "tap0", "-E"])
    assert out.returncode == 69
    assert out.stderr.strip().splitlines() == ["eoe_filter: network interface eth9 does not exist"]
    assert eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0


@userspace_only("-dd hex dumps need every frame in userspace and are refused")
def test_debug_lines_and_hex_dumps(eoe_lab: EoeLab):
    fwd = eoe_lab.start("-dd")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100, seed=0x41)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    fwd.wait_for("net to service: edited 100 bytes")
    out = fwd.output
    assert "net to service: received 122 bytes" in out
    assert "0000  06 00 00 00 00 78 06 00 00 00 00 f8 81 00 0f fe" in out  # before: the EOE frame
    assert "0000  02 00 00 00 00 02 02 00 00 00 00 01 08 00 41 42" in out  # after: the inner frame


def test_syslog_gets_the_lines_with_the_daemon_facility(eoe_lab: EoeLab, tmp_path):
    import socket as socket_module
    path = str(tmp_path / "log")
    with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(5)
        fwd = eoe_lab.start("-s", "--syslog-socket", path, ready=False)
        messages = []
        while not any(LAST_STARTUP_LINE.encode() in m for m in messages):
            messages.append(syslog.recv(4096))
        assert fwd.lines == []
        assert messages[0].startswith(b"<30>eoe_filter[")  # facility daemon (3) * 8 + info (6)
        assert b"Starting forwarder application: eoe_filter" in messages[0]
        assert fwd.stop() == 0


def test_network_interface_down_drops_and_recovers(eoe_lab: EoeLab):
    fwd = eoe_lab.start()
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    eoe_lab.ip("link", "set", "net0", "down")
    for _ in range(20):
        tap.send(inner_frame(100))
    time.sleep(0.3)
    assert fwd.proc.poll() is None
    eoe_lab.ip("link", "set", "net0", "up")
    time.sleep(0.2)
    inner = inner_frame(100, seed=5)
    tap.send(inner)
    assert receive(peer) == eoe_frame(inner, op_code=8, downstream=0, dst="06:00:00:00:00:f8",
                                      src="06:00:00:00:00:78")
    assert fwd.stop() == 0
    assert "net down 20" in fwd.output


def sent_on(eoe_lab: EoeLab, ifname: str) -> socket.socket:
    """A tap on what the board sends out of `ifname`, as tcpdump sees it."""
    with in_netns(eoe_lab.ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(abi.ETH_P_ALL))
        sock.bind((ifname, abi.ETH_P_ALL))
    eoe_lab.sockets.append(sock)
    return sock


def outgoing(sock: socket.socket, inner: list[bytes], quiet: float = 0.3) -> int:
    """How many of the `inner` frames the tap saw leave, encapsulated (and nothing else the stack sends)."""
    sock.settimeout(quiet)
    tails = {frame[-40:] for frame in inner}
    count = 0
    while True:
        try:
            data, address = sock.recvfrom(1 << 16)
        except TimeoutError:
            return count
        count += address[2] == socket.PACKET_OUTGOING and data[-40:] in tails


@pytest.mark.parametrize("datapath", ["simple", "fast"])
@pytest.mark.parametrize("bypass", [False, True])
def test_qdisc_bypass_is_opt_in_and_hides_our_frames_from_taps(eoe_lab: EoeLab, datapath: str, bypass: bool):
    fwd = eoe_lab.start("--datapath", datapath, *(["--qdisc-bypass"] if bypass else []))
    peer, tap, watch = eoe_lab.socket("peer0"), eoe_lab.socket("tap0"), sent_on(eoe_lab, "net0")
    inner = [inner_frame(100, seed=k) for k in range(5)]
    for frame in inner:
        tap.send(frame)
    assert len(receive_all(peer)) == 5  # delivered either way
    assert outgoing(watch, inner) == (0 if bypass else 5)
    assert fwd.stop() == 0
