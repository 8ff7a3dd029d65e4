"""`--datapath fast --workers 2`: worker pairs behind a multi-queue TAP and a PACKET_FANOUT group.

Every frame carries its flow and its sequence number, so one comparison per
flow checks loss, order and bytes at once. Which worker forwarded a frame
shows in the per-worker counters; the choices of the fanout program (net to
service) and of the TAP's steering program (service to net) are predicted
by running them in the unit tests' interpreter, on the view the kernel
gives each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from unit.cbpf_vm import fanout_view, run

from eoe_filter.link.bpf_classic import eoe_fanout_program, tap_steering_program

from .conftest import EoeLab, Forwarder, receive, receive_all
from .frames import eoe_frame
from .test_fast_datapath import UPSTREAM, big_socket, exchange, workers

WORKERS = 2
FLOWS, PER_FLOW = 48, 30
WORKER_LINE = re.compile(r"worker (\d+): net to service (\d+) frames, service to net (\d+) frames")


@pytest.fixture(autouse=True)
def _datapath_given_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOE_TEST_DATAPATH", raising=False)


def start(eoe_lab: EoeLab, *args: str) -> Forwarder:
    return eoe_lab.start("--datapath", "fast", "--workers", str(WORKERS), *args)


def flow_frame(flow: int, seq: int, upstream: bool) -> bytes:
    """An inner UDP frame of `flow` (sizes vary along it); upstream frames are the replies of downstream ones."""
    host, board = f"10.0.{flow // 200}.{flow % 200 + 1}", "10.1.0.1"
    ip = IP(src=board, dst=host) / UDP(sport=7, dport=30000 + flow) if upstream \
        else IP(src=host, dst=board) / UDP(sport=30000 + flow, dport=7)
    body = struct.pack("!HH", flow, seq) + bytes((flow + seq + i) & 0xFF for i in range(20 + (seq * 37) % 300))
    return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / ip / Raw(body))


def flow_of(inner: bytes) -> int:
    return struct.unpack_from("!H", inner, 42)[0]


def per_flow(frames: list[bytes]) -> dict[int, list[bytes]]:
    found: dict[int, list[bytes]] = {}
    for frame in frames:
        found.setdefault(flow_of(frame[22:] if frame[12:14] == b"\x81\x00" else frame), []).append(frame)
    return found


def every_pair_restarted(fwd: Forwarder, before: list[int] | None = None) -> None:
    """Wait until all 2 x WORKERS workers run again (none of `before`), and a moment for their rings."""
    deadline = time.monotonic() + 5
    while len(now := workers(fwd.proc.pid)) != 2 * WORKERS or set(now) & set(before or ()):
        assert time.monotonic() < deadline, fwd.output
        time.sleep(0.05)
    time.sleep(0.2)


def worker_counts(output: str) -> dict[int, tuple[int, int]]:
    return {int(k): (int(down), int(up)) for k, down, up in WORKER_LINE.findall(output)}


def test_every_worker_runs_and_all_stop_on_sigterm(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    children = workers(fwd.proc.pid)
    assert len(children) == 2 * WORKERS
    queues = os.listdir(f"/proc/{fwd.proc.pid}/fd")
    assert sum(os.readlink(f"/proc/{fwd.proc.pid}/fd/{fd}") == "/dev/net/tun" for fd in queues) == WORKERS
    fwd.signal(signal.SIGTERM)
    assert fwd.proc.wait(5) == 0
    time.sleep(0.1)
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert "did not stop" not in fwd.output and "Traceback" not in fwd.output
    assert eoe_lab.lab.run(eoe_lab.ns, ["ip", "link", "show", "tap0"]).returncode != 0


def test_many_flows_both_ways_arrive_whole_in_order_and_spread_over_the_workers(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    peer, tap = big_socket(eoe_lab, "peer0"), big_socket(eoe_lab, "tap0")
    down = [eoe_frame(flow_frame(flow, seq, upstream=False)) for seq in range(PER_FLOW) for flow in range(FLOWS)]
    up = [flow_frame(flow, seq, upstream=True) for seq in range(PER_FLOW) for flow in range(FLOWS)]
    out_tap, out_peer = exchange(peer, tap, down, up)
    time.sleep(0.2)  # the workers count once per burst, after its writes
    shown = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0", "--json"])
    live = json.loads(shown.stdout)["workers"]
    text = eoe_lab.lab.run(eoe_lab.ns, [sys.executable, "-m", "eoe_filter", "stats", "tap0"]).stdout
    assert fwd.stop() == 0
    assert per_flow(out_tap) == per_flow([frame[22:] for frame in down])
    assert per_flow(out_peer) == per_flow([eoe_frame(inner, **UPSTREAM) for inner in up])
    fanout, steering = eoe_fanout_program(WORKERS), tap_steering_program(WORKERS)
    predicted = [[0, 0] for _ in range(WORKERS)]
    for frame in down:
        view = fanout_view(frame)
        assert view is not None
        predicted[run(fanout, *view)][0] += 1
    for inner in up:
        predicted[run(steering, inner)][1] += 1
    assert all(all(pair) for pair in predicted), predicted  # the flows do spread
    assert [list(pair) for _, pair in sorted(worker_counts(fwd.output).items())] == predicted, fwd.output
    assert [[w["net_to_service"]["frames"], w["service_to_net"]["frames"]] for w in live] == predicted, live
    for k, (down_frames, up_frames) in enumerate(predicted):
        assert f"worker {k}: net -> service {down_frames} frames, service -> net {up_frames} frames" in text, text
    assert "dropped: none" in fwd.output and "no queue steering program" not in fwd.output


def test_tap_deleted_from_outside_comes_back_with_every_queue(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    eoe_lab.ip("link", "del", "tap0")
    fwd.wait_for("tap0 is back; forwarding resumed", timeout=5)
    deadline = time.monotonic() + 5
    while len(workers(fwd.proc.pid)) != 2 * WORKERS:
        assert time.monotonic() < deadline, fwd.output
        time.sleep(0.05)
    assert "multi_queue" in eoe_lab.ip("-d", "link", "show", "tap0")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    for flow in range(8):
        peer.send(eoe_frame(flow_frame(flow, 0, upstream=False)))
    assert sorted(receive_all(tap)) == sorted(flow_frame(flow, 0, upstream=False) for flow in range(8))
    for flow in range(8):
        tap.send(flow_frame(flow, 0, upstream=True))
    assert sorted(receive_all(peer)) == sorted(eoe_frame(flow_frame(flow, 0, upstream=True), **UPSTREAM)
                                               for flow in range(8))
    assert fwd.stop() == 0


def test_a_recreated_network_interface_gets_a_new_fanout_group(eoe_lab: EoeLab):
    """A member cannot be bound again: the datapath restarts on the forwarder's re-bound socket."""
    fwd = start(eoe_lab)
    before = workers(fwd.proc.pid)
    eoe_lab.recreate_network()
    fwd.wait_for("the fanout group follows it; restarting the datapath", timeout=5)
    every_pair_restarted(fwd, before)
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    down = [flow_frame(flow, 0, upstream=False) for flow in range(16)]
    for inner in down:
        peer.send(eoe_frame(inner))
    assert sorted(receive_all(tap)) == sorted(down)  # each once: the forwarder's own socket stays muted
    up = [flow_frame(flow, 0, upstream=True) for flow in range(16)]
    for inner in up:
        tap.send(inner)
    assert sorted(receive_all(peer)) == sorted(eoe_frame(inner, **UPSTREAM) for inner in up)
    assert fwd.stop() == 0


def test_a_killed_worker_restarts_every_pair(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    before = workers(fwd.proc.pid)
    os.kill(before[-1], signal.SIGKILL)
    fwd.wait_for(f"worker (pid {before[-1]}) was killed by SIGKILL", timeout=5)
    deadline = time.monotonic() + 5
    while len(after := workers(fwd.proc.pid)) != 2 * WORKERS or set(after) & set(before):
        assert time.monotonic() < deadline, fwd.output
        time.sleep(0.05)
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    down = [flow_frame(flow, 1, upstream=False) for flow in range(16)]
    for inner in down:
        peer.send(eoe_frame(inner))
    assert sorted(receive_all(tap)) == sorted(down)
    assert fwd.stop() == 0


def test_the_filter_is_on_every_member(eoe_lab: EoeLab):
    fwd = start(eoe_lab, "-F")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    wanted = [flow_frame(flow, 2, upstream=False) for flow in range(16)]
    for inner in wanted:
        peer.send(eoe_frame(inner, op_code=8))  # not op_code 1: refused by -F
        peer.send(eoe_frame(inner))
    assert sorted(receive_all(tap)) == sorted(wanted)
    assert fwd.stop() == 0


def test_under_user_the_tap_and_the_group_come_back_steered(eoe_lab: EoeLab):
    """--user keeps CAP_NET_ADMIN and CAP_NET_RAW only: the steering program's fd, loaded at start, is
    attached again to a re-created TAP, and new members are made for a re-created interface."""
    fwd = start(eoe_lab, "--user", "nobody")
    eoe_lab.ip("link", "del", "tap0")
    fwd.wait_for("tap0 is back; forwarding resumed", timeout=5)
    eoe_lab.recreate_network()
    fwd.wait_for("the fanout group follows it; restarting the datapath", timeout=5)
    every_pair_restarted(fwd)
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    up = [flow_frame(flow, 3, upstream=True) for flow in range(32)]
    for inner in up:
        tap.send(inner)
    assert sorted(receive_all(peer)) == sorted(eoe_frame(inner, **UPSTREAM) for inner in up)
    steering, predicted = tap_steering_program(WORKERS), [0] * WORKERS
    for inner in up:
        predicted[run(steering, inner)] += 1
    assert fwd.stop() == 0
    assert [up_count for _, (_, up_count) in sorted(worker_counts(fwd.output).items())] == predicted, fwd.output
    assert "no queue steering program" not in fwd.output and "Traceback" not in fwd.output


def test_debug_lines_name_the_worker(eoe_lab: EoeLab):
    fwd = start(eoe_lab, "-d")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    down = [flow_frame(flow, 4, upstream=False) for flow in range(16)]
    for inner in down:
        peer.send(eoe_frame(inner))
    assert sorted(receive_all(tap)) == sorted(down)
    fwd.wait_for("net to service [1]: received")
    assert fwd.stop() == 0


def test_own_outgoing_frames_never_reach_the_tap(eoe_lab: EoeLab):
    """The fanout group, not its members, decides whether it sees what the workers send."""
    fwd = start(eoe_lab)
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    for flow in range(16):
        tap.send(flow_frame(flow, 0, upstream=True))
    assert len(receive_all(peer)) == 16
    assert receive(tap, 0.5) is None
    assert fwd.stop() == 0
    assert worker_counts(fwd.output) and all(down == 0 for down, _ in worker_counts(fwd.output).values())


def test_a_single_queue_tap_is_refused_and_left_alone(eoe_lab: EoeLab):
    eoe_lab.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
    fwd = eoe_lab.start("--datapath", "fast", "--workers", str(WORKERS), ready=False)
    assert fwd.proc.wait(10) == 69
    assert "single-queue; --workers 2 needs a multi-queue TAP" in fwd.output
    assert "multi_queue" not in eoe_lab.ip("-d", "link", "show", "tap0")

