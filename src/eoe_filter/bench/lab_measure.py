"""Lab measurements for `eoe_filter bench`: the traffic generator's ceiling
and the C baseline's forwarding rate, each in throw-away namespaces.

Run as a script (`python -m eoe_filter.bench.lab_measure`, as root) to
print the figures. Generator, forwarder and sink are separate processes
pinned to chosen CPUs; the frames are built here, independently of the
codecs under test, so a codec bug cannot cancel itself out.
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import statistics
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..lab import Lab
from .cbuild import build_c_original
from .traffic import (
    FIELD_SIZE,
    Generator,
    GenReport,
    InNetns,
    Sink,
    SinkReport,
    socket_offset,
)

LAB_PREFIX = "efbench"
NET_IF, PEER_IF, TAP_IF = "net0", "peer0", "tapc"
EOE_HDR = 22
INNER_SEQ = 14  # sequence number right after the inner Ethernet header
INNER_TS = INNER_SEQ + FIELD_SIZE
INNER_ETHERTYPE = 0x88B5  # IEEE local experimental: nothing in the stack handles it
Direction = Literal["net_to_tap", "tap_to_net"]


def inner_frame(size: int) -> bytes:
    """An untagged test frame of `size` bytes with room for seq and stamp."""
    if size < INNER_TS + FIELD_SIZE:
        raise ValueError(f"inner frame needs at least {INNER_TS + FIELD_SIZE} bytes")
    head = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", INNER_ETHERTYPE)
    return head + bytes(size - len(head))


def eoe_frame(inner: bytes) -> bytes:
    """The EOE frame a switch sends down to the board (op_code 1,
    downstream): default addresses swapped, TCI 0x0ffe, no padding."""
    return (
        bytes.fromhex("060000000078" "0600000000f8")
        + struct.pack("!HHHBHB", 0x8100, 0x0FFE, 4 + len(inner), 0x18, 0, 0)
        + inner
    )


@dataclass(frozen=True, slots=True)
class Figure:
    """Repeated measurements of one rate, in frames/s."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def default_cpus() -> tuple[int, int, int]:
    """(generator, forwarder, sink) CPUs from those this process may use:
    the forwarder alone on the last one; generator and sink share the
    first (the sink needs little: recvmmsg moves its copying to it)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[-1], cpus[0]


def generator_ceiling(frame_size: int, *, repeats: int = 3, duration: float = 1.0, batch: int = 256, cpu: int | None = None) -> Figure:
    """Frames/s one generator process (on `cpu`, default the generator CPU
    of default_cpus()) offers into a veth whose far end nobody listens on;
    the kernel still receives and frees each frame, on the sender's CPU."""
    cpu = default_cpus()[0] if cpu is None else cpu
    runs = []
    with Lab(LAB_PREFIX) as lab:
        ns, peer = lab.netns("gen"), lab.netns("peer")
        lab.veth(ns, NET_IF, peer, PEER_IF)
        factory = functools.partial(Generator, NET_IF, inner_frame(frame_size), batch=batch)
        for _ in range(repeats):
            with InNetns(ns, factory, cpu=cpu) as gen:
                gen.start(duration=duration)
                runs.append(gen.result(duration + 30).rate)
    return Figure(tuple(runs))


@dataclass(frozen=True, slots=True)
class ForwardRun:
    """One C-baseline run: what was offered, what the sink got, the
    forwarder's own counters and its CPU time (user + system)."""

    direction: Direction
    offered: GenReport
    received: SinkReport
    counters: dict[str, dict[str, int]]
    cpu_seconds: float

    @property
    def forwarded(self) -> int:
        return self.counters[self.direction]["fwd"]

    @property
    def forwarded_rate(self) -> float:
        """Frames the forwarder wrote per second of offered traffic."""
        return self.forwarded / self.offered.seconds if self.offered.seconds > 0 else 0.0

    @property
    def cpu_ns_per_frame(self) -> float:
        return self.cpu_seconds * 1e9 / self.forwarded if self.forwarded else float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process, all threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpu: int) -> None:
    """Pin every thread of a running process (threads do not inherit later changes)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def wait_ready(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Wait for c_original's "ready" line (its TAP is up, both threads run)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"c_original (pid {proc.pid}) printed nothing in {timeout} s")
    if (line := proc.stdout.readline()) != "ready\n":
        raise RuntimeError(f"c_original (pid {proc.pid}) said {line!r} instead of 'ready'")


def stop_c_original(proc: subprocess.Popen[Any], timeout: float = 10.0) -> dict[str, dict[str, int]]:
    """SIGTERM c_original (our child, by PID) and return the counters it
    prints on exit, {"net_to_tap": {"rx": .., "fwd": ..}, "tap_to_net": ..};
    any exit status but 0 is an error."""
    proc.send_signal(signal.SIGTERM)
    if (rc := proc.wait(timeout)) != 0:
        raise RuntimeError(f"c_original (pid {proc.pid}) exited {rc}")
    out, _ = proc.communicate()  # it has exited: reads to EOF and closes the pipe
    counters = {}
    for line in out.splitlines():
        direction, *pairs = line.split()
        counters[direction] = {k: int(v) for k, v in (p.split("=") for p in pairs)}
    return counters


def c_baseline(
    binary: Path,
    direction: Direction,
    *,
    inner_size: int = 64,
    duration: float = 2.0,
    rate: float | None = None,
    cpus: tuple[int, int, int] | None = None,
) -> ForwardRun:
    """Forwarding rate of c_original in one direction: generator on the
    veth peer -> c_original -> sink on the TAP (net_to_tap), or generator
    writing into the TAP through a packet socket -> c_original -> sink on
    the veth peer (tap_to_net). `cpus` = (generator, forwarder, sink),
    default_cpus() if None."""
    cpu_gen, cpu_fwd, cpu_sink = cpus or default_cpus()
    inner = inner_frame(inner_size)
    with Lab(LAB_PREFIX) as lab:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET_IF, peer, PEER_IF)
        proc = lab.start(dut, [str(binary), "-n", NET_IF, "-t", TAP_IF], stdout=subprocess.PIPE, text=True)
        wait_ready(proc)
        _pin(proc.pid, cpu_fwd)
        if direction == "net_to_tap":
            gen_at = (peer, functools.partial(Generator, PEER_IF, eoe_frame(inner),
                                              seq_offset=EOE_HDR + INNER_SEQ, ts_offset=EOE_HDR + INNER_TS))
            sink_at = (dut, functools.partial(Sink, TAP_IF, seq_offset=INNER_SEQ, ts_offset=INNER_TS))
        else:
            gen_at = (dut, functools.partial(Generator, TAP_IF, inner, seq_offset=INNER_SEQ, ts_offset=INNER_TS))
            sink_at = (peer, functools.partial(Sink, PEER_IF,
                                               seq_offset=socket_offset(EOE_HDR + INNER_SEQ, tagged=True),
                                               ts_offset=socket_offset(EOE_HDR + INNER_TS, tagged=True)))
        with InNetns(*sink_at, cpu=cpu_sink) as sink, InNetns(*gen_at, cpu=cpu_gen) as gen:
            cpu0 = _cpu_seconds(proc.pid)
            sink.start(idle=1.0, duration=duration + 10)
            gen.start(duration=duration, rate=rate)
            offered = gen.result(duration + 30)
            received = sink.result(30)
            cpu = _cpu_seconds(proc.pid) - cpu0
        return ForwardRun(direction, offered, received, stop_c_original(proc), cpu)


def main() -> None:
    """Print the generator ceiling and the C baseline's rates."""
    for size in (64, 1400):
        fig = generator_ceiling(size)
        print(f"generator {size:4d} B: median {fig.median:12,.0f} frames/s  runs {[round(r) for r in fig.runs]}")
    with tempfile.TemporaryDirectory() as tmp:
        built = build_c_original(Path(tmp))
        if built.binary is None:
            print(f"C baseline skipped: {built.reason}")
            return
        for direction in ("net_to_tap", "tap_to_net"):
            run = c_baseline(built.binary, direction)
            lat = run.received.latency
            print(
                f"c_original {direction}: offered {run.offered.rate:12,.0f}/s"
                f"  forwarded {run.forwarded_rate:12,.0f}/s  sink {run.received.rate:12,.0f}/s"
                f"  cpu {run.cpu_ns_per_frame:6.0f} ns/frame"
                f"  sink drops {run.received.socket_drops}  counters {run.counters[direction]}"
                + (f"  latency p50 {lat.p50 / 1000:.0f} us p99 {lat.p99 / 1000:.0f} us" if lat else "")
            )


if __name__ == "__main__":
    main()
