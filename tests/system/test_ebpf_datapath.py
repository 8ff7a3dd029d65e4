"""The eBPF datapath: what it attaches, the same bytes and counters as simple, TCP super-frames on the
wire, stale programs after SIGKILL, nothing left at exit, and a fallback that says what is missing."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from eoe_filter.datapath.ebpf import ATTACH_ENV, unavailable_reason
from eoe_filter.ebpf import syscall as sc
from eoe_filter.ebpf.asm import R0, R1, R2, R3, R6, assemble, call, encode, exit_, mov
from eoe_filter.ebpf.programs import PROGRAM_PREFIX, STRIP_MAX_INNER
from eoe_filter.lab import Lab, in_netns
from eoe_filter.link.abi import ABI
from eoe_filter.wire.eoe import HEADER_LEN, EoeHeader, encapsulate
from eoe_filter.wire.vlan import dhcp_to_oam_vid, oam_to_dhcp_vid

from .conftest import (
    EoeLab,
    Forwarder,
    raw_socket,
    receive,
    receive_all,
    start_forwarder,
)
from .frames import BOARD_MAC, SWITCH_MAC, dhcp_offer, eoe_frame, inner_frame

EBPF = ("--datapath", "ebpf")
UPSTREAM = {"op_code": 8, "downstream": 0, "dst": SWITCH_MAC, "src": BOARD_MAC}
MIRROR = ("--op-code", "1", "--downstream", "1", "--dmac", BOARD_MAC, "--smac", SWITCH_MAC)
"""The switch side of a back-to-back pair: what it sends, the board's -F accepts."""


@pytest.fixture(autouse=True)
def _datapath_given_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOE_TEST_DATAPATH", raising=False)


def ours(lab: Lab, ns: str) -> list[str]:
    """Every program of ours attached in `ns`, as "interface:hook:name", through any attach method."""
    found = []
    with in_netns(ns):
        interfaces = socket.if_nameindex()
        for index, name in interfaces:
            for hook, attach_type in (("ingress", sc.ATTACH_TCX_INGRESS), ("egress", sc.ATTACH_TCX_EGRESS)):
                found += [f"{name}:tcx {hook}:{sc.program_info_by_id(i).name}"
                          for i in sc.query_programs(index, attach_type)]
    for _, name in interfaces:
        for hook in ("ingress", "egress"):
            out = lab.run(ns, ["tc", "-j", "filter", "show", "dev", name, hook]).stdout
            found += [f"{name}:clsact {hook}:{f['options']['bpf_name']}" for f in json.loads(out or "[]")
                      if f.get("kind") == "bpf" and "options" in f]
    return sorted(f for f in found if f.rsplit(":", 1)[1].startswith(PROGRAM_PREFIX))


def clsact_qdiscs(lab: Lab, ns: str) -> list[str]:
    out = json.loads(lab.run(ns, ["ip", "-j", "link", "show"]).stdout)
    return [link["ifname"] for link in out
            if any(q.get("kind") == "clsact" for q in json.loads(
                lab.run(ns, ["tc", "-j", "qdisc", "show", "dev", link["ifname"]]).stdout or "[]"))]


def links(lab: Lab, ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(lab.run(ns, ["ip", "-j", "link", "show"]).stdout)]


# --- attached, and gone at exit -------------------------------------------------------------------

EOE_PROGRAMS = ["net0:{k} ingress:eoe_decap", "tap0:{k} egress:eoe_to_seg", "tap0:{k} ingress:eoe_arrival"]


def expected(kind: str, segmenter: str) -> list[str]:
    return sorted([p.format(k=kind) for p in EOE_PROGRAMS] + [f"{segmenter}:{kind} ingress:eoe_encap"])


def segmenter_of(lab: Lab, ns: str) -> tuple[str, str]:
    pair = sorted(name for name in links(lab, ns) if name.startswith("eoes"))
    assert len(pair) == 2, links(lab, ns)
    return pair[0], pair[1]


@pytest.mark.parametrize("mode", ["link", "netlink"])
def test_attached_then_nothing_left_at_exit(eoe_lab: EoeLab, monkeypatch: pytest.MonkeyPatch, mode: str):
    monkeypatch.setenv(ATTACH_ENV, mode)
    before = links(eoe_lab.lab, eoe_lab.ns)
    fwd = eoe_lab.start(*EBPF)
    kind = "tcx" if mode == "link" else "clsact"
    assert any("kernel datapath attached (eBPF): " in line for line in fwd.lines)
    assert "waiting for data" not in fwd.output  # no forwarding threads to report
    _, far = segmenter_of(eoe_lab.lab, eoe_lab.ns)
    assert ours(eoe_lab.lab, eoe_lab.ns) == expected(kind, far)
    assert sorted(clsact_qdiscs(eoe_lab.lab, eoe_lab.ns)) == ([] if mode == "link" else sorted(["net0", "tap0", far]))
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100, seed=1)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    tap.send(inner)
    assert receive(peer) == eoe_frame(inner, **UPSTREAM)
    assert fwd.stop() == 0
    assert "net to service: 1 frames, 100 bytes" in fwd.output and "service to net: 1 frames, 122 bytes" in fwd.output
    assert ours(eoe_lab.lab, eoe_lab.ns) == []
    assert clsact_qdiscs(eoe_lab.lab, eoe_lab.ns) == []
    assert links(eoe_lab.lab, eoe_lab.ns) == before  # TAP and segmenter gone


@pytest.mark.parametrize("mode", ["link", "netlink"])
def test_sigkill_then_restart_replaces_instead_of_stacking(eoe_lab: EoeLab, monkeypatch: pytest.MonkeyPatch,
                                                           mode: str):
    monkeypatch.setenv(ATTACH_ENV, mode)
    kind = "tcx" if mode == "link" else "clsact"
    fwd = eoe_lab.start(*EBPF, "--persist")
    _, far = segmenter_of(eoe_lab.lab, eoe_lab.ns)
    fwd.signal(signal.SIGKILL)
    fwd.proc.wait(5)
    left = ours(eoe_lab.lab, eoe_lab.ns)
    if mode == "link":  # links close with their process: only the segmenter pair stays
        assert left == []
    else:
        assert left == expected(kind, far)
    fwd = eoe_lab.start(*EBPF)
    assert any("replaced segmenter" in line for line in fwd.lines)
    if mode == "netlink":
        assert any("replaced what a killed earlier run left attached" in line for line in fwd.lines)
    assert ours(eoe_lab.lab, eoe_lab.ns) == expected(kind, far)  # one copy each, not two
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(200, seed=4)
    peer.send(eoe_frame(inner))
    assert receive_all(tap) == [inner]  # once: a stacked copy would strip twice or inject twice
    tap.send(inner)
    assert receive_all(peer) == [eoe_frame(inner, **UPSTREAM)]
    assert fwd.stop() == 0
    assert ours(eoe_lab.lab, eoe_lab.ns) == [] and clsact_qdiscs(eoe_lab.lab, eoe_lab.ns) == []


@pytest.mark.parametrize("mode", ["link", "netlink"])
def test_sigkill_then_cleanup_leaves_nothing(eoe_lab: EoeLab, monkeypatch: pytest.MonkeyPatch, mode: str):
    monkeypatch.setenv(ATTACH_ENV, mode)
    before = links(eoe_lab.lab, eoe_lab.ns)
    fwd = eoe_lab.start(*EBPF, "--persist")
    near, _ = segmenter_of(eoe_lab.lab, eoe_lab.ns)
    fwd.signal(signal.SIGKILL)
    fwd.proc.wait(5)
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "cleanup"])
    assert out.returncode == 0, out.stderr
    assert "net0: ARP resolution restored" in out.stdout
    assert "removed the segmenter veth pair of tap0" in out.stdout
    assert ours(eoe_lab.lab, eoe_lab.ns) == [] and clsact_qdiscs(eoe_lab.lab, eoe_lab.ns) == []
    assert links(eoe_lab.lab, eoe_lab.ns) == [*before, "tap0"]  # the persistent TAP stays, bare
    assert near not in links(eoe_lab.lab, eoe_lab.ns)
    out = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "cleanup"])
    assert out.stdout.strip() == "nothing to clean up in this network namespace"


def test_a_second_forwarder_on_the_same_network_interface_does_not_stack(eoe_lab: EoeLab):
    eoe_lab.start(*EBPF)
    first = ours(eoe_lab.lab, eoe_lab.ns)
    second = start_forwarder(eoe_lab.lab, eoe_lab.ns, "-n", "net0", "-t", "tap1", "-E", *EBPF, ready=False)
    assert second.proc.wait(10) == 69
    assert any("another eoe_filter" in e and "net0" in e for e in second.errors), second.output
    assert ours(eoe_lab.lab, eoe_lab.ns) == first


# --- the same bytes and counters as simple ---------------------------------------------------------

def net_side_frames(rng: random.Random) -> list[bytes]:
    """Valid EOE frames, what -F and the acceptance options refuse, runts, tagged stubs and noise."""
    tagged = inner_frame(100, ethertype=0x8100)
    control = tagged[:16] + b"\x08\xab" + tagged[18:]
    frames = []
    for i in range(400):
        kind = rng.random()
        size = rng.randint(14, 1496)
        if kind < 0.45:
            frames.append(eoe_frame(inner_frame(size, seed=i), op_code=rng.choice((1, 1, 1, 8)),
                                    vid=rng.choice((4094, 4094, 100))))
        elif kind < 0.55:
            frames.append(eoe_frame(rng.choice((tagged, control)), op_code=1))
        elif kind < 0.65:
            frames.append(rng.randbytes(rng.randint(14, 35)))
        elif kind < 0.7:
            frames.append(eoe_frame(inner_frame(18, ethertype=0x8100))[:rng.randint(36, 41)])
        elif kind < 0.75:
            frames.append(bytes(12) + b"\x81\x00" + rng.randbytes(rng.randint(0, 5)))
        else:
            frames.append(rng.randbytes(12) + rng.randbytes(size - 12))
    return frames


def tap_side_frames(rng: random.Random) -> list[bytes]:
    """Padding, IPv4 (through the segmenter), tagged inner frames, frames too big for the network MTU."""
    frames = []
    for i in range(400):
        kind = rng.random()
        if kind < 0.3:
            frames.append(inner_frame(rng.randint(14, 70), seed=i, ethertype=rng.choice((0x0800, 0x88B5, 0x0806))))
        elif kind < 0.4:
            frames.append(inner_frame(rng.randint(18, 1500), seed=i, ethertype=0x8100))
        elif kind < 0.45:
            frames.append(inner_frame(rng.randint(1497, 1600), seed=i))
        else:
            frames.append(inner_frame(rng.randint(71, 1496), seed=i, ethertype=rng.choice((0x0800, 0x88B5))))
    return frames


def send_batches(sock: socket.socket, frames: list[bytes], burst: int = 20) -> None:
    for at in range(0, len(frames), burst):
        for frame in frames[at:at + burst]:
            sock.send(frame)
        time.sleep(0.02)


def counters(lab: Lab, ns: str) -> dict[str, dict]:
    time.sleep(0.7)  # the control loop's half-second collection, and the kernel datapath's 0.1 s sync
    out = lab.run(ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0", "--json"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["counters"]


def run_both_ways(lab: Lab, ns: str, datapath: str, options: tuple[str, ...], down: list[bytes],
                  up: list[bytes]) -> tuple[list[bytes], list[bytes], dict[str, dict]]:
    fwd = start_forwarder(lab, ns, "-n", "net0", "-t", "tap0", "-E", "--tap-mtu", "1600", "--datapath", datapath,
                          *options)
    peer, tap = raw_socket(ns, "peer0"), raw_socket(ns, "tap0")
    for sock in (peer, tap):
        sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUFFORCE, 64 << 20)
    with peer, tap:
        senders = [threading.Thread(target=send_batches, args=args) for args in ((peer, down), (tap, up))]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        seen = counters(lab, ns)
        out_tap, out_peer = receive_all(tap), receive_all(peer)
    assert fwd.stop() == 0, fwd.output
    return out_tap, out_peer, seen


@pytest.mark.parametrize("options", [(), ("-F",), ("--accept-dmac", BOARD_MAC, "--accept-vid", "4094")],
                         ids=["plain", "filter", "accept"])
def test_the_same_frames_and_counters_as_simple(lab: Lab, options: tuple[str, ...]):
    rng = random.Random(0xEBF + len(options))
    down, up = net_side_frames(rng), tap_side_frames(rng)
    results = {}
    for datapath in ("simple", "ebpf"):
        ns = lab.netns(datapath)
        lab.veth(ns, "net0", ns, "peer0")
        results[datapath] = run_both_ways(lab, ns, datapath, options, down, up)
    simple, ebpf = results["simple"], results["ebpf"]
    assert len(simple[0]) > 100 and len(simple[1]) > 100
    assert ebpf[0] == simple[0]
    assert ebpf[1] == simple[1]
    for direction, seen in simple[2].items():
        kernel = ebpf[2][direction]
        assert kernel["frames"] == seen["frames"] and kernel["bytes"] == seen["bytes"], (direction, kernel, seen)
        for reason, n in seen["drops"].items():
            if n is not None:  # None: what a socket filter dropped, which only the kernel datapath counts
                assert kernel["drops"][reason] == n, (direction, reason, kernel, seen)
    if options == ("-F",):
        assert ebpf[2]["net_to_service"]["drops"]["filtered"] > 0


def test_dhcp_relay_the_same_as_simple(lab: Lab):
    frames_down = [dhcp_offer(vid, pcp=vid % 8) for vid in (100, 1, 0, 4094, 4095, 2, 4093)]
    frames_down += [dhcp_offer(200, dport=67), inner_frame(80, seed=3)]
    frames_up = [dhcp_offer(vid, pcp=3) for vid in (99, 4093, 0, 4094, 4095, 1)]
    results = {}
    for datapath in ("simple", "ebpf"):
        ns = lab.netns(datapath)
        lab.veth(ns, "oam0", ns, "oampeer")
        lab.veth(ns, "svc0", ns, "svcpeer")
        fwd = start_forwarder(lab, ns, "-n", "oam0", "-t", "svc0", "-V", "--datapath", datapath)
        oampeer, svcpeer = raw_socket(ns, "oampeer"), raw_socket(ns, "svcpeer")
        with oampeer, svcpeer:
            for frame in frames_down:
                oampeer.send(frame)
            for frame in frames_up:
                svcpeer.send(frame)
            results[datapath] = (receive_all(svcpeer), receive_all(oampeer))
        assert fwd.stop() == 0
        results[datapath] += (fwd.output[fwd.output.index("counters:"):],)
    assert results["ebpf"] == results["simple"]
    down, up = results["ebpf"][:2]
    assert [int.from_bytes(f[14:16], "big") & 0xFFF for f in down[:7]] == [
        oam_to_dhcp_vid(vid) for vid in (100, 1, 0, 4094, 4095, 2, 4093)]
    assert [int.from_bytes(f[14:16], "big") & 0xFFF for f in up] == [
        dhcp_to_oam_vid(vid) for vid in (99, 4093, 0, 4094, 4095, 1)]


# --- TCP: super-frames are segmented before they are encapsulated -------------------------------------

def check_wire_frame(frame: bytes, header: EoeHeader, mtu: int) -> None:
    """A frame on the wire is one EOE frame: our header, its true length, a whole IPv4 packet with valid checksums."""
    assert len(frame) <= mtu + 18, len(frame)
    length = int.from_bytes(frame[16:18], "big")
    assert length == len(frame) - 18
    inner = frame[22:]
    assert frame == encapsulate(header, inner), "header or padding differs from the userspace codec's"
    if inner[12:14] != b"\x08\x00":
        return
    ip = inner[14:]
    total = int.from_bytes(ip[2:4], "big")
    assert 14 + total <= len(inner) and (len(inner) == 64 or 14 + total == len(inner))
    assert _checksum(ip[:(ip[0] & 15) * 4]) == 0
    if ip[9] == 6:
        tcp = ip[(ip[0] & 15) * 4:total]
        pseudo = ip[12:20] + b"\x00\x06" + len(tcp).to_bytes(2, "big")
        assert _checksum(pseudo + tcp) == 0, "TCP checksum left for an offload that will never come"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


class OutgoingCapture(threading.Thread):
    """Every frame `ifname` transmits, read as it comes."""

    def __init__(self, ns: str, ifname: str) -> None:
        super().__init__(daemon=True)
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            self.sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUFFORCE, 256 << 20)
            self.sock.bind((ifname, 3))
        self.sock.settimeout(0.1)
        self.frames: list[bytes] = []
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                data, address = self.sock.recvfrom(1 << 17)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING:
                self.frames.append(data)

    def stop(self) -> list[bytes]:
        self.done.set()
        self.join()
        self.sock.close()
        return self.frames


def test_tcp_through_two_forwarders_is_byte_exact_on_the_wire(lab: Lab):
    board, switch = lab.netns("board"), lab.netns("switch")
    lab.veth(board, "eth0", switch, "eth0")
    fwds = [start_forwarder(lab, switch, "-n", "eth0", "-t", "tap-fwd", "-E", *MIRROR, *EBPF),
            start_forwarder(lab, board, "-n", "eth0", "-t", "tap-fwd", "-E", "-F", *EBPF)]
    lab.run(board, ["ip", "addr", "add", "169.254.17.4/24", "dev", "tap-fwd"], check=True)
    lab.run(switch, ["ip", "addr", "add", "169.254.17.1/24", "dev", "tap-fwd"], check=True)
    captures = {ns: OutgoingCapture(ns, "eth0") for ns in (board, switch)}
    payload = random.Random(7).randbytes(24 << 20)
    with in_netns(switch):
        server = socket.create_server(("169.254.17.1", 5201))
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received.extend(chunk)

    sink = threading.Thread(target=serve)
    sink.start()
    with in_netns(board):
        client = socket.create_connection(("169.254.17.1", 5201), timeout=30)
    with client:
        client.sendall(payload)
    sink.join(30)
    server.close()
    time.sleep(0.3)
    board_frames, switch_frames = captures[board].stop(), captures[switch].stop()
    assert bytes(received) == payload
    assert len(board_frames) > len(payload) // 1500  # one frame per segment: no super-frame left whole
    for frames, header in ((board_frames, EoeHeader()),
                           (switch_frames, EoeHeader(op_code=1, downstream=1, dst=bytes.fromhex("060000000078"),
                                                     src=bytes.fromhex("0600000000f8")))):
        for frame in frames:
            check_wire_frame(frame, header, 1500)
    for fwd in fwds:
        assert fwd.stop() == 0


# --- what the kernel cannot see, and falling back -------------------------------------------------

def test_a_tag_handed_over_out_of_band_is_forwarded_as_an_inline_one(eoe_lab: EoeLab):
    """A veth peer with transmit VLAN offload (or a NIC with receive VLAN offload) keeps the tag out of
    the data: tc ingress sees it in skb metadata either way."""
    fwd = eoe_lab.start(*EBPF)
    with in_netns(eoe_lab.ns):
        push = assemble([mov(R6, R1), mov(R2, 0x0081 if sys.byteorder == "little" else 0x8100), mov(R3, 0xFFE),
                         call("skb_vlan_push"), mov(R0, 0), exit_()])
        prog = sc.load_program(sc.PROG_TYPE_SCHED_CLS, encode(push), "test_tag_push")
        link = sc.create_link(prog, socket.if_nametoindex("peer0"), sc.ATTACH_TCX_EGRESS)
    try:
        peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
        frame = eoe_frame(inner_frame(100))
        peer.send(frame[:12] + frame[16:])  # the tag goes out of band
        assert receive_all(tap) == [frame[HEADER_LEN:]]
    finally:
        os.close(link)
        os.close(prog)
    assert fwd.stop() == 0
    assert "net to service: 1 frames" in fwd.output


def test_auto_picks_ebpf_and_says_so(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--datapath", "auto", ready=False)
    fwd.wait_for("kernel datapath attached")
    assert "datapath auto: ebpf, because the kernel took every program" in fwd.lines
    shown = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0", "--json"])
    snap = json.loads(shown.stdout)
    assert (snap["datapath"], snap["datapath_choice"]) == ("ebpf", "ebpf, because the kernel took every program")
    shown = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0"])
    assert "datapath ebpf (auto: ebpf, because the kernel took every program)" in shown.stdout
    assert fwd.stop() == 0


def test_frames_too_long_for_tc_to_trim_are_counted_too_big_and_auto_avoids_them(eoe_lab: EoeLab):
    for name in ("net0", "peer0"):
        eoe_lab.ip("link", "set", name, "mtu", "65535")
    fwd = eoe_lab.start("--tap-mtu", "65521", *EBPF)
    warning = ("eoe_filter: network MTU 65535 lets inner frames of up to 65531 bytes through, and the kernel "
               f"programs forward at most {STRIP_MAX_INNER}: larger ones are counted as too big "
               "(--datapath fast forwards them)")
    assert warning in fwd.errors
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    for size in (9000, STRIP_MAX_INNER, STRIP_MAX_INNER + 1, 65531):
        frame = eoe_frame(inner_frame(size))
        peer.send(frame)
        assert receive_all(tap) == ([frame[HEADER_LEN:]] if size <= STRIP_MAX_INNER else [])
    assert fwd.stop() == 0
    assert "net to service: 2 frames" in fwd.output and "too big 2" in fwd.output
    fwd = eoe_lab.start("--tap-mtu", "65521", "--datapath", "auto")
    assert any(line.startswith("datapath auto: fast, because eBPF datapath unavailable: network MTU 65535 lets")
               for line in fwd.lines), fwd.output
    assert fwd.stop() == 0


def test_auto_with_hex_dumps_stays_in_userspace_and_ebpf_refuses_them(eoe_lab: EoeLab):
    fwd = eoe_lab.start("--datapath", "auto", "-dd")
    assert any(line.startswith("datapath auto: fast, because") and "-dd hex dumps need every frame in userspace"
               in line for line in fwd.lines)
    assert fwd.stop() == 0
    refused = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "-n", "net0", "-t", "tap0", "-E",
                                           "-dd", *EBPF])
    assert refused.returncode == 78
    assert refused.stderr.strip().splitlines() == [
        "eoe_filter: datapath ebpf: -dd hex dumps need every frame in userspace (use fast, simple or auto)"]


WITHOUT_BPF = ["setpriv", "--bounding-set=-bpf,-sys_admin,-perfmon", "--inh-caps=-all"]
"""Root without the capabilities bpf() wants: it can still open raw sockets and the TAP."""


def test_without_bpf_privilege_auto_falls_back_with_one_line(eoe_lab: EoeLab):
    proc = eoe_lab.lab.start(eoe_lab.ns, [*WITHOUT_BPF, sys.executable, "-m", "eoe_filter", "-n", "net0", "-t",
                                          "tap0", "-E", "--datapath", "auto"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fwd = Forwarder(proc)  # type: ignore[arg-type]
    fwd.wait_for("service to net thread is waiting for data")
    chosen = [line for line in fwd.lines if line.startswith("datapath auto:")]
    assert chosen == [("datapath auto: fast, because eBPF datapath unavailable: bpf() not permitted: "
                       "CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN are needed")]
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    assert fwd.stop() == 0


def test_without_bpf_privilege_ebpf_fails_with_that_line(eoe_lab: EoeLab):
    out = eoe_lab.lab.run(eoe_lab.ns, [*WITHOUT_BPF, sys.executable, "-m", "eoe_filter", "-n", "net0", "-t",
                                       "tap0", "-E", *EBPF])
    assert out.returncode == 69
    assert out.stderr.strip().splitlines() == [
        ("eoe_filter: eBPF datapath unavailable: bpf() not permitted: CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN "
         "are needed")]
    assert "tap0" not in links(eoe_lab.lab, eoe_lab.ns)


def test_a_missing_helper_is_named():
    log = "0: R1=ctx() R10=fp0\n...\n57: (85) call unknown#163\ninvalid func unknown#163\nprocessed 58 insns\n"
    error = sc.BpfError(22, "loading eBPF program eoe_encap", log)
    assert unavailable_reason(error) == ("this kernel lacks the eBPF helper bpf_check_mtu() "
                                         "(loading eBPF program eoe_encap)")
