"""What is specific to `--datapath fast`: the same bytes as simple under load, worker processes, rings.

The whole suite runs over fast, the default (and over the reference,
simple, with EOE_TEST_DATAPATH=simple); these tests pin the datapath
themselves, whatever that variable says.
"""

from __future__ import annotations

import functools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from eoe_filter.bench import lab_measure
from eoe_filter.bench.procstat import pin, process_tree
from eoe_filter.bench.traffic import Generator, InNetns, Sink
from eoe_filter.link.abi import ABI

from .conftest import EoeLab, Forwarder, receive, receive_all
from .frames import eoe_frame, inner_frame

UPSTREAM = {"op_code": 8, "downstream": 0, "dst": "06:00:00:00:00:f8", "src": "06:00:00:00:00:78"}
TAP_MTU = "1600"  # room for inner frames the network MTU cannot carry once encapsulated: counted too big


@pytest.fixture(autouse=True)
def _datapath_given_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EOE_TEST_DATAPATH", raising=False)


def start(eoe_lab: EoeLab, datapath: str = "fast", *args: str) -> Forwarder:
    return eoe_lab.start("--datapath", datapath, *args)


def workers(pid: int) -> list[int]:
    """The forwarder's child processes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return sorted(found)


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def big_socket(eoe_lab: EoeLab, ifname: str) -> socket.socket:
    """A test socket whose queue holds a whole differential run."""
    sock = eoe_lab.socket(ifname)
    sock.setsockopt(ABI.SOL_SOCKET, ABI.SO_RCVBUFFORCE, 64 << 20)
    return sock


def traffic(seed: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """(frames the switch sends to net0, frames the host sends into tap0), mixed sizes, runts and garbage."""
    rng = random.Random(seed)
    down, up = [], []
    for i in range(count):
        kind = rng.random()
        if kind < 0.04:
            down.append(rng.randbytes(rng.randint(14, 35)))  # a runt
        elif kind < 0.08:
            down.append(rng.randbytes(rng.randint(36, 1514)))  # garbage: decapsulated as it is
        elif kind < 0.12:  # tagged, around the shortest EOE frame (36 bytes): the kernel lifts the tag
            down.append(eoe_frame(inner_frame(64, seed=i))[:rng.randint(32, 40)])
        else:
            down.append(eoe_frame(inner_frame(rng.randint(64, 1496), seed=i)))
        kind = rng.random()
        size = rng.randint(1497, 1600) if kind < 0.03 else rng.randint(14, 63) if kind < 0.1 else rng.randint(64, 1496)
        up.append(inner_frame(size, seed=i))
    return down, up


def send_paced(sock: socket.socket, frames: list[bytes], burst: int = 50) -> None:
    """Bursts the slowest datapath absorbs (the TAP queue holds 1000 frames): this test is about bytes."""
    for i in range(0, len(frames), burst):
        for frame in frames[i:i + burst]:
            sock.send(frame)
        time.sleep(0.01)


def exchange(peer: socket.socket, tap: socket.socket, down: list[bytes], up: list[bytes]) -> tuple[list[bytes],
                                                                                                list[bytes]]:
    """Send `down` from peer0 and `up` into tap0 at the same time; what then came out of tap0 and of peer0."""
    senders = [threading.Thread(target=send_paced, args=args) for args in ((peer, down), (tap, up))]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(0.5)
    return receive_all(tap), receive_all(peer)


def run_through(eoe_lab: EoeLab, datapath: str, down: list[bytes], up: list[bytes]) -> tuple[list[bytes], list[bytes],
                                                                                              str]:
    """Both directions at once through one forwarder: what came out of tap0, of peer0, and its counters."""
    fwd = start(eoe_lab, datapath, "--tap-mtu", TAP_MTU)
    peer, tap = big_socket(eoe_lab, "peer0"), big_socket(eoe_lab, "tap0")
    out_tap, out_peer = exchange(peer, tap, down, up)
    assert fwd.stop() == 0
    peer.close()
    tap.close()
    eoe_lab.sockets.clear()
    counters = fwd.output[fwd.output.index("counters:"):]
    return out_tap, out_peer, counters


def test_fast_gives_the_same_bytes_in_the_same_order_as_simple(eoe_lab: EoeLab):
    down, up = traffic(seed=20240607, count=3000)
    simple = run_through(eoe_lab, "simple", down, up)
    fast = run_through(eoe_lab, "fast", down, up)
    runts = sum(len(f) < 36 for f in down)
    too_big = sum(len(f) > 1496 for f in up)
    assert f"runt {runts}" in simple[2] and f"too big {too_big}" in simple[2], simple[2]
    assert "queue overflow" not in simple[2] + fast[2]
    assert len(simple[0]) == len(down) - runts and len(simple[1]) == len(up) - too_big
    assert fast[0] == simple[0]
    assert fast[1] == simple[1]
    assert fast[2] == simple[2]


def test_two_workers_stop_with_the_forwarder_in_a_flood_and_none_is_left(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    children = workers(fwd.proc.pid)
    assert len(children) == 2
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    flooding = threading.Event()
    flooding.set()

    def flood(sock: socket.socket, frame: bytes) -> None:
        while flooding.is_set():
            try:
                sock.send(frame)
            except OSError:  # a full queue: keep pushing
                pass

    floods = [threading.Thread(target=flood, args=args, daemon=True)
              for args in ((peer, eoe_frame(inner_frame(64))), (tap, inner_frame(64)))]
    for t in floods:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        assert fwd.stop() == 0
        assert time.monotonic() - t0 < 2
    finally:
        flooding.clear()
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert "did not stop" not in fwd.output


def test_sigint_to_the_whole_group_stops_cleanly(eoe_lab: EoeLab):
    """A terminal's Ctrl-C reaches every process of the group: workers leave it to the parent."""
    fwd = start(eoe_lab)
    children = workers(fwd.proc.pid)
    for pid in (fwd.proc.pid, *children):
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:  # the parent was quicker: it already stopped this worker
            pass
    assert fwd.proc.wait(5) == 0
    time.sleep(0.1)
    assert "Traceback" not in fwd.output
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]


def test_a_killed_worker_is_reported_and_nothing_hangs(eoe_lab: EoeLab):
    fwd = start(eoe_lab)
    victim = workers(fwd.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    fwd.wait_for(f"worker (pid {victim}) was killed by SIGKILL", timeout=5)
    deadline = time.monotonic() + 5
    while fwd.proc.poll() is None and time.monotonic() < deadline:
        if len(workers(fwd.proc.pid)) == 2 and victim not in workers(fwd.proc.pid):
            break  # the forwarder restarted its datapath: it must forward again
        time.sleep(0.05)
    if fwd.proc.poll() is not None:
        assert fwd.proc.returncode != 0
    else:
        peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
        inner = inner_frame(100, seed=7)
        peer.send(eoe_frame(inner))
        assert receive(tap) == inner
        tap.send(inner)
        assert receive(peer) == eoe_frame(inner, **UPSTREAM)
        assert fwd.stop() == 0
    assert "Traceback" not in fwd.output


@pytest.mark.parametrize("workers_option", [(), ("--workers", "2")], ids=["one pair", "two pairs"])
def test_idle_costs_no_cpu(eoe_lab: EoeLab, workers_option: tuple[str, ...]):
    fwd = start(eoe_lab, "fast", *workers_option)
    pids = [fwd.proc.pid, *workers(fwd.proc.pid)]
    time.sleep(0.5)
    before = cpu_seconds(pids)
    time.sleep(2)
    assert cpu_seconds(pids) - before < 0.1  # 5 % of one core


def test_frames_larger_than_a_ring_slot_pass_whole_and_in_order(eoe_lab: EoeLab):
    """Slots are sized for the MTU at start; a frame that outgrows them comes whole through the socket queue."""
    fwd = start(eoe_lab)
    for name in ("net0", "peer0"):
        eoe_lab.ip("link", "set", name, "mtu", "9000")
    fwd.wait_for("tap0 MTU set to 8982")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inners = [inner_frame(size, seed=size) for size in (100, 5000, 200, 6000, 7000, 300, 8964, 64)]
    for inner in inners:
        peer.send(eoe_frame(inner))
    assert receive_all(tap) == inners
    for inner in inners:
        tap.send(inner)
    assert receive_all(peer) == [eoe_frame(inner, **UPSTREAM) for inner in inners]
    assert fwd.stop() == 0
    assert "dropped: none" in fwd.output and "truncated" not in fwd.output


def test_debug_lines_come_from_the_workers(eoe_lab: EoeLab):
    fwd = start(eoe_lab, "fast", "-d")
    peer, tap = eoe_lab.socket("peer0"), eoe_lab.socket("tap0")
    inner = inner_frame(100, seed=3)
    peer.send(eoe_frame(inner))
    assert receive(tap) == inner
    fwd.wait_for("net to service: received 122 bytes")
    assert fwd.stop() == 0
    assert re.search(r"service to net: 0 frames", fwd.output)


PREEMPTER = """\
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except PermissionError:
    sys.exit(77)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    time.sleep(20e-6)
    spin = time.perf_counter() + 4e-6
    while time.perf_counter() < spin:
        pass
"""
"""A real-time task that takes one CPU from everything else on it for a few microseconds, tens of thousands of times
a second, for argv[2] seconds at most: a busy machine's preemptions, made frequent."""
ORDER_SECONDS = 6.0


def test_frames_stay_in_order_when_the_ring_overflows_and_its_reader_is_preempted(eoe_lab: EoeLab):
    """The kernel refills a slot as soon as the worker hands it back. A hand-back in two stores (a memoryview slice
    assignment: memcpy() of 4 bytes) let it, when the worker was preempted between them, write a frame there that
    the second store erased; from then on that slot was filled a lap late, and a frame arrived out of order every lap.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one for the worker, one for the traffic")
    traffic_cpu, worker_cpu = cpus[0], cpus[-1]
    fwd = start(eoe_lab)
    pin(process_tree(fwd.proc.pid), {worker_cpu})
    preempter = subprocess.Popen([sys.executable, "-c", PREEMPTER, str(worker_cpu), str(ORDER_SECONDS + 10)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert preempter.stdout is not None
        if preempter.stdout.readline() != "ready\n":
            pytest.skip("SCHED_FIFO is refused here: the worker cannot be preempted often enough")
        sink = functools.partial(Sink, "tap0", seq_offset=lab_measure.INNER_SEQ)
        generator = functools.partial(Generator, "peer0", lab_measure.eoe_frame(lab_measure.inner_frame(64)),
                                      seq_offset=lab_measure.EOE_HDR + lab_measure.INNER_SEQ)
        with InNetns(eoe_lab.ns, sink, cpu=traffic_cpu) as received, \
                InNetns(eoe_lab.ns, generator, cpu=traffic_cpu) as sent:
            received.start(idle=1.0, duration=ORDER_SECONDS + 30)
            sent.start(duration=ORDER_SECONDS)
            offered = sent.result(ORDER_SECONDS + 30)
            got = received.result(60)
    finally:
        preempter.kill()
        preempter.wait()
    assert fwd.stop() == 0
    if "queue overflow" not in fwd.output:
        pytest.skip(f"the worker kept up with {offered.rate:,.0f} frames/s: its ring never overflowed")
    assert got.frames, fwd.output
    assert got.late == 0, f"{got.late} of {got.frames} frames arrived after a later one ({offered.frames} sent)"
