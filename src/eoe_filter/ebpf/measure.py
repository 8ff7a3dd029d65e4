"""What the kernel datapath costs and gains, against the C baseline and the userspace datapaths.

Run as root: `python -m eoe_filter.ebpf.measure [--rate N] [--seconds S] [--repeats R]`.

* CPU per frame: the eBPF datapath has no process of its own; its programs
  run in softirq context, which this kernel (tick accounting, no
  IRQ_TIME_ACCOUNTING) charges to the task it interrupts: the generator's
  or sink's sending and receiving threads (softirqs run when their system
  calls re-enable bottom halves) or ksoftirqd. So the cost is the CPU time
  of everything the traffic touches (generator and sink threads, the
  forwarder's processes, ksoftirqd) around a fixed offered load of 64-byte
  inner frames, one direction at a time, minus the same for a plain veth
  pair (generator and sink alone), per delivered frame. Other load on the
  machine is left out, except what it takes of ksoftirqd.
  For the eBPF datapath, the time spent in its programs themselves (the
  kernel's run-time statistics) is shown too: the rest is the kernel's own
  work on the frames (XDP on a veth, skbs, the TAP's receive path).
* Latency: one-way p50/p99 at a low rate in small batches, as the sink sees it.
* TCP: iperf3 through two forwarders back to back, against a plain veth pair.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..bench.cbuild import build_c_original
from ..bench.lab_measure import (
    EOE_HDR,
    INNER_SEQ,
    INNER_TS,
    eoe_frame,
    inner_frame,
    stop_c_original,
    wait_ready,
)
from ..bench.traffic import Generator, InNetns, Sink, socket_offset
from ..lab import Lab, in_netns
from . import syscall as sc

PREFIX = "efebpf"
NET, PEER, TAP = "net0", "peer0", "tapm"
READY = {"ebpf": "kernel datapath attached", "fast": "service to net thread is waiting for data",
         "simple": "service to net thread is waiting for data"}
WAYS = ("net_to_tap", "tap_to_net")
MIRROR = ["--op-code", "1", "--downstream", "1", "--dmac", "06:00:00:00:00:78", "--smac", "06:00:00:00:00:f8"]


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """pid and its descendants (the fast datapath's workers)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user + system, system) seconds of the processes, all their threads."""
    user = system = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + system) / hz, system / hz


def ksoftirqd(cpu: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == f"ksoftirqd/{cpu}":
                found.append(int(pid))
        except OSError:  # a process that just exited
            continue
    return found


@contextmanager
def forwarder(lab: Lab, ns: str, name: str, binary: Path | None) -> Iterator[list[int]]:
    """The forwarder under test on net0 (none for "veth"), pinned to the last CPU, stopped by its PID.

    Yields the PIDs of its processes.
    """
    if name == "veth":
        yield []
        return
    if name == "c":
        assert binary is not None
        proc = lab.start(ns, [str(binary), "-n", NET, "-t", TAP], stdout=subprocess.PIPE, text=True)
        wait_ready(proc)  # type: ignore[arg-type]
    else:
        proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", "-n", NET, "-t", TAP, "-E", "--datapath", name],
                         stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY[name] in line:  # type: ignore[operator]
                break
        else:
            raise RuntimeError(f"eoe_filter --datapath {name} exited before it was ready")
    cpu = max(os.sched_getaffinity(0))
    for tid in os.listdir(f"/proc/{proc.pid}/task"):  # the C original and the Python datapaths' threads
        os.sched_setaffinity(int(tid), {cpu})
    try:
        yield tree(proc.pid)
    finally:
        if name == "c":
            stop_c_original(proc)
        else:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)


def attached_programs(lab: Lab, ns: str) -> list[int]:
    """IDs of the programs attached to the interfaces of `ns`: tcx and XDP."""
    with in_netns(ns):
        interfaces = socket.if_nameindex()
        found = [prog for index, _ in interfaces for kind in (sc.ATTACH_TCX_INGRESS, sc.ATTACH_TCX_EGRESS)
                 for prog in sc.query_programs(index, kind)]
    for _, name in interfaces:
        link = json.loads(lab.run(ns, ["ip", "-j", "-d", "link", "show", name]).stdout)[0]
        if "xdp" in link:
            found.append(link["xdp"]["prog"]["id"])
    return found


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
    p50_us: float | None
    p99_us: float | None


def run(name: str, way: str, *, rate: float, seconds: float, batch: int, binary: Path | None) -> Run:
    """One forwarder (or the plain veth), one way, a fixed offered load; the machine's busy time around it.

    The generator never bypasses the qdisc: frames must meet tc egress, as a
    host's own traffic into the TAP does.
    """
    cpu = min(os.sched_getaffinity(0))
    inner = inner_frame(64)
    tagged = socket_offset(EOE_HDR + INNER_SEQ, tagged=True), socket_offset(EOE_HDR + INNER_TS, tagged=True)
    with Lab(PREFIX) as lab:
        dut, peer = lab.netns("dut"), lab.netns("peer")
        lab.veth(dut, NET, peer, PEER)
        if name == "veth" and way == "net_to_tap":
            gen = (peer, functools.partial(Generator, PEER, eoe_frame(inner), seq_offset=EOE_HDR + INNER_SEQ,
                                           ts_offset=EOE_HDR + INNER_TS, batch=batch, qdisc_bypass=False))
            sink = (dut, functools.partial(Sink, NET, seq_offset=tagged[0], ts_offset=tagged[1]))
        elif name == "veth":
            gen = (dut, functools.partial(Generator, NET, inner, seq_offset=INNER_SEQ, ts_offset=INNER_TS,
                                          batch=batch, qdisc_bypass=False))
            sink = (peer, functools.partial(Sink, PEER, seq_offset=INNER_SEQ, ts_offset=INNER_TS))
        elif way == "net_to_tap":
            gen = (peer, functools.partial(Generator, PEER, eoe_frame(inner), seq_offset=EOE_HDR + INNER_SEQ,
                                           ts_offset=EOE_HDR + INNER_TS, batch=batch, qdisc_bypass=False))
            sink = (dut, functools.partial(Sink, TAP, seq_offset=INNER_SEQ, ts_offset=INNER_TS))
        else:
            gen = (dut, functools.partial(Generator, TAP, inner, seq_offset=INNER_SEQ, ts_offset=INNER_TS,
                                          batch=batch, qdisc_bypass=False))
            sink = (peer, functools.partial(Sink, PEER, seq_offset=tagged[0], ts_offset=tagged[1]))
        with forwarder(lab, dut, name, binary) as pids, InNetns(*sink, cpu=cpu) as s, InNetns(*gen, cpu=cpu) as g:
            time.sleep(0.5)
            programs = attached_programs(lab, dut) if name == "ebpf" else []
            stats = sc.enable_stats()
            try:
                fwd0, soft0, prog0 = cpu_seconds(pids)[0], cpu_seconds(ksoftirqd(cpu))[0], program_time(programs)
                s.start(idle=1.0, duration=seconds + 10)
                g.start(duration=seconds, rate=rate)
                sent = g.result(seconds + 30)
                received = s.result(30)
                fwd = cpu_seconds(pids)[0] - fwd0
                soft = cpu_seconds(ksoftirqd(cpu))[0] - soft0
                prog = program_time(programs) - prog0
            finally:
                os.close(stats)
    latency = received.latency
    cpu_time = sent.cpu_user + sent.cpu_sys + received.cpu_user + received.cpu_sys + fwd + soft
    return Run(received.frames, cpu_time, fwd, prog, latency.p50 / 1000 if latency else None,
               latency.p99 / 1000 if latency else None)


def cpu_table(rate: float, seconds: float, repeats: int, binary: Path | None,
              forwarders: list[str], ways: list[str]) -> list[str]:
    lines = [(f"CPU per frame at {rate:,.0f} frames/s offered for {seconds:g} s, 64-byte inner frames "
              "(CPU of everything the traffic touches, minus the plain veth's, per delivered frame; other load "
              f"only adds, so the least of {repeats} runs is the estimate, the median follows)")]
    names = ["veth", *(f for f in forwarders if f != "c" or binary is not None)]
    for way in ways:
        runs: dict[str, list[Run]] = {name: [] for name in names}
        for _ in range(repeats):  # interleaved: a disturbance hits every forwarder alike
            for name in names:
                runs[name].append(run(name, way, rate=rate, seconds=seconds, batch=64, binary=binary))
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


def latency_table(binary: Path | None, repeats: int, forwarders: list[str], ways: list[str]) -> list[str]:
    lines = ["One-way latency at 20,000 frames/s in batches of 4 (sink's view, median of runs): p50 / p99 µs"]
    names = ["veth", *(f for f in forwarders if f != "c" or binary is not None)]
    for way in ways:
        for name in names:
            found = [run(name, way, rate=20_000, seconds=3, batch=4, binary=binary) for _ in range(repeats)]
            p50 = statistics.median(r.p50_us for r in found if r.p50_us is not None)
            p99 = statistics.median(r.p99_us for r in found if r.p99_us is not None)
            lines.append(f"  {way:<10} {name:<5} p50 {p50:7.1f}  p99 {p99:7.1f}")
    return lines


def iperf(datapath: str | None, seconds: float) -> float:
    """Gbit/s of one iperf3 TCP stream: through two forwarders back to back, or (None) over a plain veth pair."""
    with Lab(PREFIX) as lab:
        board, switch = lab.netns("board"), lab.netns("switch")
        lab.veth(board, "eth0", switch, "eth0")
        device = "eth0"
        procs = []
        if datapath is not None:
            device = "tap-fwd"
            for ns, extra in ((switch, MIRROR), (board, ["-F"])):
                proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", "-n", "eth0", "-t", device, "-E",
                                      "--datapath", datapath, *extra], stdout=subprocess.PIPE, text=True)
                assert proc.stdout is not None
                for line in proc.stdout:
                    if READY[datapath] in line:  # type: ignore[operator]
                        break
                procs.append(proc)
        lab.run(board, ["ip", "addr", "add", "169.254.17.4/24", "dev", device], check=True)
        lab.run(switch, ["ip", "addr", "add", "169.254.17.1/24", "dev", device], check=True)
        server = lab.start(switch, ["iperf3", "-s", "-1", "-B", "169.254.17.1"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        client = lab.run(board, ["iperf3", "-c", "169.254.17.1", "-t", str(seconds), "-J"], timeout=seconds + 30)
        server.wait(10)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    return json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eoe_filter.ebpf.measure", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=100_000, help="offered frames/s for the CPU figures")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], choices=["cpu", "latency", "tcp"])
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
        if "cpu" not in args.skip:
            print("\n".join(cpu_table(args.rate, args.seconds, args.repeats, built.binary, args.forwarders,
                                      args.ways)), flush=True)
        if "latency" not in args.skip:
            print("\n".join(latency_table(built.binary, args.repeats, args.forwarders, args.ways)), flush=True)
    if "tcp" not in args.skip:
        for label, datapath in (("plain veth pair", None), ("two forwarders, ebpf", "ebpf"),
                                ("two forwarders, fast", "fast")):
            found = [iperf(datapath, 5.0) for _ in range(args.repeats)]
            print(f"TCP (iperf3, one stream, 5 s) {label:<22} {statistics.median(found):6.2f} Gbit/s  "
                  f"runs {' '.join(f'{g:.2f}' for g in found)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
