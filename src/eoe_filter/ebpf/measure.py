"""What the kernel datapath costs in CPU machine-wide, against the C original and the userspace datapaths.

Run as root: `python -m eoe_filter.ebpf.measure [--rate N] [--seconds S] [--repeats R]`.
Throughput, latency and TCP through two forwarders are `eoe_filter bench`'s
figures; this adds the cost the bench's per-process CPU figures cannot see.

The eBPF datapath has no process of its own; its programs run in softirq
context, which this kernel (tick accounting, no IRQ_TIME_ACCOUNTING) charges
to the task it interrupts: the generator's or sink's sending and receiving
threads (softirqs run when their system calls re-enable bottom halves) or
ksoftirqd. So the cost is the CPU time of everything the traffic touches
(generator and sink threads, the forwarder's processes, ksoftirqd) around a
fixed offered load of 64-byte inner frames, one direction at a time, minus
the same for a plain veth pair (generator and sink alone), per delivered
frame. Other load on the machine is left out, except what it takes of
ksoftirqd. For the eBPF datapath, the time spent in its programs themselves
(the kernel's run-time statistics) is shown too: the rest is the kernel's
own work on the frames (skbs, the TAP's receive path, the segmenter).
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..bench.cbuild import build_c_original
from ..bench.command import ForwarderProcess
from ..bench.lab_measure import (
    EOE_HDR,
    INNER_SEQ,
    INNER_TS,
    NET_IF,
    PEER_IF,
    TAP_IF,
    default_cpus,
    eoe_frame,
    inner_frame,
)
from ..bench.procstat import cpu_seconds, ksoftirqd
from ..bench.traffic import Generator, InNetns, Sink, socket_offset
from ..lab import Lab, in_netns
from . import syscall as sc

PREFIX = "efebpf"
WAYS = ("net_to_tap", "tap_to_net")


def attached_programs(lab: Lab, ns: str) -> list[int]:
    """IDs of the programs attached to the interfaces of `ns` (through tcx links)."""
    with in_netns(ns):
        return [prog for index, _ in socket.if_nameindex() for kind in (sc.ATTACH_TCX_INGRESS, sc.ATTACH_TCX_EGRESS)
                for prog in sc.query_programs(index, kind)]


def program_time(ids: list[int]) -> float:
    """Seconds the programs ran (helpers included) while run-time statistics were on."""
    return sum(sc.program_info_by_id(i).run_time_ns for i in ids) / 1e9


@dataclass(frozen=True, slots=True)
class Run:
    delivered: int
    cpu: float
    """Seconds of CPU: generator and sink threads, forwarder processes, ksoftirqd."""
    forwarder_cpu: float
    programs: float
    """Seconds in the eBPF programs themselves (0 for the others)."""


def run(name: str, way: str, *, rate: float, seconds: float, binary: Path | None, workdir: Path) -> Run:
    """One forwarder (or the plain veth), one way, a fixed offered load; the machine's busy time around it.

    The generator never bypasses the qdisc: frames must meet tc egress, as a
    host's own traffic into the TAP does. Without a forwarder the sink
    listens on the veth's other end, which sees the same frames.
    """
    gen_cpu, fwd_cpu, _ = default_cpus()
    inner = inner_frame(64)
    down = functools.partial(Generator, PEER_IF, eoe_frame(inner), seq_offset=EOE_HDR + INNER_SEQ,
                             ts_offset=EOE_HDR + INNER_TS, batch=64, qdisc_bypass=False)
    tagged = {"seq_offset": socket_offset(EOE_HDR + INNER_SEQ, tagged=True),
              "ts_offset": socket_offset(EOE_HDR + INNER_TS, tagged=True)}
    plain = {"seq_offset": INNER_SEQ, "ts_offset": INNER_TS}
    with Lab(PREFIX) as lab:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET_IF, peer, PEER_IF)
        service = NET_IF if name == "veth" else TAP_IF
        if way == "net_to_tap":
            gen = (peer, down)
            sink = (dut, functools.partial(Sink, service, **(tagged if name == "veth" else plain)))
        else:
            gen = (dut, functools.partial(Generator, service, inner, batch=64, qdisc_bypass=False, **plain))
            sink = (peer, functools.partial(Sink, PEER_IF, **(plain if name == "veth" else tagged)))
        dut_proc = None if name == "veth" else ForwarderProcess(lab, dut, name, binary, workdir / f"{name}.log",
                                                                {fwd_cpu})
        pids = [] if dut_proc is None else dut_proc.processes()
        softirq = [pid for cpu, pid in ksoftirqd().items() if cpu == gen_cpu]
        try:
            with InNetns(*sink, cpu=gen_cpu) as s, InNetns(*gen, cpu=gen_cpu) as g:
                time.sleep(0.5)
                programs = attached_programs(lab, dut) if name == "ebpf" else []
                stats = sc.enable_stats()
                try:
                    fwd0, soft0, prog0 = cpu_seconds(pids), cpu_seconds(softirq), program_time(programs)
                    s.start(idle=1.0, duration=seconds + 10)
                    g.start(duration=seconds, rate=rate)
                    sent = g.result(seconds + 30)
                    received = s.result(30)
                    fwd = cpu_seconds(pids) - fwd0
                    soft = cpu_seconds(softirq) - soft0
                    prog = program_time(programs) - prog0
                finally:
                    os.close(stats)
        finally:
            if dut_proc is not None:
                dut_proc.stop()
    cpu_time = sent.cpu_user + sent.cpu_sys + received.cpu_user + received.cpu_sys + fwd + soft
    return Run(received.frames, cpu_time, fwd, prog)


def cpu_table(rate: float, seconds: float, repeats: int, binary: Path | None, workdir: Path,
              forwarders: list[str], ways: list[str]) -> list[str]:
    """The table's lines: per way, each forwarder's CPU per frame above the plain veth's."""
    lines = [(f"CPU per frame at {rate:,.0f} frames/s offered for {seconds:g} s, 64-byte inner frames "
              "(CPU of everything the traffic touches, minus the plain veth's, per delivered frame; other load "
              f"only adds, so the least of {repeats} runs is the estimate, the median follows)")]
    names = ["veth", *(f for f in forwarders if f != "c" or binary is not None)]
    for way in ways:
        runs: dict[str, list[Run]] = {name: [] for name in names}
        for _ in range(repeats):  # interleaved: a disturbance hits every forwarder alike
            for name in names:
                runs[name].append(run(name, way, rate=rate, seconds=seconds, binary=binary, workdir=workdir))
        per_frame = {name: sorted(r.cpu / r.delivered for r in found) for name, found in runs.items()}
        base, base_median = per_frame["veth"][0], statistics.median(per_frame["veth"])
        cost = {}
        for name in names[1:]:
            frames = statistics.median(r.delivered for r in runs[name])
            cost[name] = per_frame[name][0] - base
            median = statistics.median(per_frame[name]) - base_median
            own = min(r.forwarder_cpu / r.delivered for r in runs[name])
            programs = min(r.programs / r.delivered for r in runs[name])
            lines.append(f"  {way:<10} {name:<5} delivered {frames:>9,.0f}  cpu {cost[name] * 1e9:6.0f} ns/frame "
                         f"(median {median * 1e9:6.0f}; in its own processes {own * 1e9:5.0f}"
                         + (f"; in its eBPF programs, helpers included, {programs * 1e9:5.0f})" if programs else ")"))
        lines.append(f"  {way:<10} veth  alone {base * 1e9:6.0f} ns/frame (generator and sink)")
        if "c" in cost and "ebpf" in cost:
            lines.append(f"  {way:<10} ebpf / c = {cost['ebpf'] / cost['c']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eoe_filter.ebpf.measure", description=__doc__.split("\n")[0],
                                epilog="Throughput, latency and TCP through two forwarders: eoe_filter bench.")
    p.add_argument("--rate", type=float, default=100_000, help="offered frames/s (default 100000)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forwarders", nargs="+", default=["c", "fast", "ebpf"], choices=["c", "simple", "fast", "ebpf"])
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("measure needs root (namespaces, TAP devices, raw sockets, bpf())", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        built = build_c_original(Path(tmp))
        if built.binary is None:
            print(f"C baseline not built: {built.reason}")
        print("\n".join(cpu_table(args.rate, args.seconds, args.repeats, built.binary, Path(tmp), args.forwarders,
                                  args.ways)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
