"""Forwarding rate, CPU cost and latency of the Python datapaths against the C baseline.

Run as root: `python -m eoe_filter.bench.measure_datapaths` prints a table
(medians of --repeats runs); `measure()` returns the same figures for
`eoe_filter bench`. Each run builds throw-away namespaces (a veth net0 <->
peer0, the forwarder on net0 with TAP tapc), pins generator, forwarder
(with all its threads and worker processes) and sink as lab_measure does,
and offers 64-byte-inner or larger frames at full speed:

* delivered: frames/s the sink received (its own clock, first to last batch);
* cpu: user + system time of the forwarder and its workers (/proc/PID/stat)
  per delivered frame;
* latency: a separate run at a rate every forwarder sustains, small
  generator batches, one-way p50/p99 as the sink sees it;
* other: the share of the forwarder's CPU that other processes took during
  the run (anything above a few % means the figures are disturbed);
* rss: the growth of the forwarder's and its workers' resident memory while
  both directions carry traffic (--rss SECONDS).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from ..lab import Lab
from .cbuild import build_c_original
from .lab_measure import (
    EOE_HDR,
    INNER_SEQ,
    INNER_TS,
    LAB_PREFIX,
    NET_IF,
    PEER_IF,
    TAP_IF,
    default_cpus,
    eoe_frame,
    inner_frame,
    stop_c_original,
    wait_ready,
)
from .traffic import Generator, InNetns, Sink, SinkReport, socket_offset

Way = Literal["net_to_tap", "tap_to_net"]
Direction = Literal["net_to_tap", "tap_to_net", "both"]
DIRECTIONS: tuple[Direction, ...] = ("net_to_tap", "tap_to_net", "both")
FORWARDERS = ("c", "simple", "fast")
READY_LINE = "service to net thread is waiting for data"
LATENCY_RATE = 20_000
LATENCY_BATCH = 4


@dataclass(frozen=True, slots=True)
class Run:
    """One run of one forwarder; rates in frames/s, latency in µs (None: not measured)."""

    forwarder: str
    direction: Direction
    size: int
    offered: float
    delivered: float
    cpu_us: float
    other: float
    p50_us: float | None = None
    p99_us: float | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """Medians over the repeated runs of one (forwarder, direction, size)."""

    forwarder: str
    direction: Direction
    size: int
    runs: tuple[Run, ...]

    def median(self, field: str) -> float:
        values = [v for r in self.runs if (v := getattr(r, field)) is not None]
        return statistics.median(values) if values else float("nan")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the fast datapath's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system time of the processes (all threads)."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of one CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(v) for v in line.split()[1:8]]
                hz = os.sysconf("SC_CLK_TCK")
                return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def _pin(pids: Iterable[int], cpu: int) -> None:
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})


@contextmanager
def forwarder(lab: Lab, ns: str, name: str, binary: Path | None) -> Iterator[subprocess.Popen[str]]:
    """c_original or `eoe_filter --datapath NAME` on net0/tapc, ready; stopped (SIGTERM) at exit."""
    if name == "c":
        if binary is None:
            raise ValueError("the C baseline needs its binary")
        proc = cast("subprocess.Popen[str]", lab.start(ns, [str(binary), "-n", NET_IF, "-t", TAP_IF],
                                                        stdout=subprocess.PIPE, text=True))
        wait_ready(proc)
    else:
        proc = cast("subprocess.Popen[str]", lab.start(ns, [sys.executable, "-m", "eoe_filter", "-n", NET_IF, "-t",
                                                            TAP_IF, "-E", "--datapath", name],
                                                        stdout=subprocess.PIPE, text=True))
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY_LINE in line:
                break
        else:
            raise RuntimeError(f"eoe_filter --datapath {name} exited ({proc.wait()}) before it was ready")
    try:
        yield proc
    finally:
        if name == "c":
            stop_c_original(proc)
        else:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)


def _ends(dut: str, peer: str, way: Way, size: int, batch: int) -> tuple[tuple[str, functools.partial[Generator]],
                                                                        tuple[str, functools.partial[Sink]]]:
    """(namespace, generator factory), (namespace, sink factory) for one way through the forwarder."""
    inner = inner_frame(size)
    if way == "net_to_tap":
        return ((peer, functools.partial(Generator, PEER_IF, eoe_frame(inner), batch=batch,
                                         seq_offset=EOE_HDR + INNER_SEQ, ts_offset=EOE_HDR + INNER_TS)),
                (dut, functools.partial(Sink, TAP_IF, seq_offset=INNER_SEQ, ts_offset=INNER_TS)))
    return ((dut, functools.partial(Generator, TAP_IF, inner, batch=batch, seq_offset=INNER_SEQ,
                                    ts_offset=INNER_TS)),
            (peer, functools.partial(Sink, PEER_IF, seq_offset=socket_offset(EOE_HDR + INNER_SEQ, tagged=True),
                                     ts_offset=socket_offset(EOE_HDR + INNER_TS, tagged=True))))


def run_once(name: str, direction: Direction, size: int, *, binary: Path | None, duration: float = 2.0,
             rate: float | None = None, batch: int = 256, cpus: tuple[int, int, int] | None = None) -> Run:
    """One forwarder, one direction (or both at once), in a fresh lab."""
    cpu_gen, cpu_fwd, cpu_sink = cpus or default_cpus()
    ways: tuple[Way, ...] = ("net_to_tap", "tap_to_net") if direction == "both" else (direction,)
    with Lab(LAB_PREFIX) as lab, ExitStack() as stack:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET_IF, peer, PEER_IF)
        proc = stack.enter_context(forwarder(lab, dut, name, binary))
        tree = process_tree(proc.pid)
        _pin(tree, cpu_fwd)
        ends = [_ends(dut, peer, way, size, batch) for way in ways]
        sinks = [stack.enter_context(InNetns(*sink, cpu=cpu_sink)) for _, sink in ends]
        gens = [stack.enter_context(InNetns(*gen, cpu=cpu_gen)) for gen, _ in ends]
        cpu0, (busy0, total0) = cpu_seconds(tree), cpu_busy_seconds(cpu_fwd)
        for sink in sinks:
            sink.start(idle=1.0, duration=duration + 10)
        for gen in gens:
            gen.start(duration=duration, rate=rate)
        offered = sum(gen.result(duration + 30).rate for gen in gens)
        received: list[SinkReport] = [sink.result(30) for sink in sinks]
        cpu, (busy1, total1) = cpu_seconds(tree) - cpu0, cpu_busy_seconds(cpu_fwd)
    frames = sum(r.frames for r in received)
    latency = received[0].latency if len(received) == 1 else None
    other = max(0.0, (busy1 - busy0 - cpu) / (total1 - total0)) if total1 > total0 else float("nan")
    return Run(name, direction, size, offered, sum(r.rate for r in received),
               cpu * 1e6 / frames if frames else float("nan"), other,
               latency.p50 / 1000 if latency else None, latency.p99 / 1000 if latency else None)


def measure(forwarders: Iterable[str] = FORWARDERS, directions: Iterable[Direction] = DIRECTIONS,
            sizes: Iterable[int] = (64, 1400), repeats: int = 3, duration: float = 2.0,
            latency: bool = True) -> list[Row]:
    """Every combination, `repeats` times, the forwarders interleaved so that a disturbance hits all alike."""
    forwarders, directions, sizes = tuple(forwarders), tuple(directions), tuple(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        binary = None
        if "c" in forwarders:
            built = build_c_original(Path(tmp))
            if built.binary is None:
                raise RuntimeError(f"cannot build the C baseline: {built.reason}")
            binary = built.binary
        runs: dict[tuple[str, Direction, int], list[Run]] = {}
        for _ in range(repeats):
            for direction in directions:
                for size in sizes:
                    for name in forwarders:
                        run = run_once(name, direction, size, binary=binary, duration=duration)
                        if latency and direction != "both" and size == min(sizes):
                            slow = run_once(name, direction, size, binary=binary, duration=duration,
                                            rate=LATENCY_RATE, batch=LATENCY_BATCH)
                            run = Run(run.forwarder, run.direction, run.size, run.offered, run.delivered,
                                      run.cpu_us, run.other, slow.p50_us, slow.p99_us)
                        runs.setdefault((name, direction, size), []).append(run)
    return [Row(*key, tuple(found)) for key, found in runs.items()]


def rss_growth(name: str = "fast", seconds: float = 60.0, rate: float = 50_000, warmup: float = 5.0) -> int:
    """Bytes the forwarder's processes grew by while both directions carried `rate` frames/s each."""
    cpu_gen, cpu_fwd, cpu_sink = default_cpus()
    with Lab(LAB_PREFIX) as lab, ExitStack() as stack:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET_IF, peer, PEER_IF)
        proc = stack.enter_context(forwarder(lab, dut, name, None))
        tree = process_tree(proc.pid)
        _pin(tree, cpu_fwd)
        ends = [_ends(dut, peer, way, size, 64) for way in ("net_to_tap", "tap_to_net") for size in (64, 1400)]
        sinks = [stack.enter_context(InNetns(*sink, cpu=cpu_sink)) for _, sink in ends[::2]]
        gens = [stack.enter_context(InNetns(*gen, cpu=cpu_gen)) for gen, _ in ends]
        for sink in sinks:
            sink.start(duration=warmup + seconds + 5)
        for gen in gens:
            gen.start(duration=warmup + seconds, rate=rate / 2)
        time.sleep(warmup)
        before = rss_bytes(tree)
        time.sleep(seconds)
        after = rss_bytes(tree)
        for gen in gens:
            gen.result(30)
        for sink in sinks:
            sink.result(30)
    return after - before


def render(rows: list[Row]) -> str:
    """The table: per direction and size, each forwarder's medians and its ratio to the C baseline."""
    base = {(r.direction, r.size): r.median("delivered") for r in rows if r.forwarder == "c"}
    head = (f"{'direction':<11} {'size':>5} {'forwarder':<9} {'delivered/s':>12} {'vs C':>6} "
            f"{'cpu µs/frame':>12} {'p50 µs':>8} {'p99 µs':>8} {'other':>6}  runs (delivered/s)")
    lines = [head]
    for r in rows:
        c = base.get((r.direction, r.size))
        ratio = f"{r.median('delivered') / c:6.2f}" if c else "     -"
        lines.append(f"{r.direction:<11} {r.size:>5} {r.forwarder:<9} {r.median('delivered'):>12,.0f} {ratio} "
                     f"{r.median('cpu_us'):>12.2f} {r.median('p50_us'):>8.0f} {r.median('p99_us'):>8.0f} "
                     f"{r.median('other'):>6.0%}  "
                     + " ".join(f"{run.delivered:,.0f}" for run in r.runs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eoe_filter.bench.measure_datapaths", description=__doc__.split("\n")[0])
    p.add_argument("--forwarders", nargs="+", default=list(FORWARDERS), choices=FORWARDERS)
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS)
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 1400])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=2.0, help="seconds of traffic per run")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency runs")
    p.add_argument("--rss", type=float, metavar="SECONDS", help="also measure fast's RSS growth over SECONDS")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("measure_datapaths needs root (namespaces, TAP devices, raw sockets)", file=sys.stderr)
        return 1
    rows = measure(args.forwarders, args.directions, args.sizes, args.repeats, args.duration, args.latency)
    print(render(rows))
    if args.rss:
        print(f"fast RSS growth over {args.rss:.0f} s of traffic both ways: {rss_growth('fast', args.rss):+,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
