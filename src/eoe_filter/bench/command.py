"""`eoe_filter bench`: how fast each datapath forwards, what it costs, against the C original and the kernel.

Everything runs in a lab of throw-away namespaces on this machine (root, no
hardware): namespace `peer` holds peer0, the switch side; namespace `dut`
holds net0 (peer0's veth peer), the forwarder under test with its TAP tapc,
and a second veth pair svc0 <-> svc1 used only by the kernel baseline.

Rows (`--datapaths`): every datapath `eoe_filter --datapath` offers, `c` (the
original's design, c_original.c, compiled here) and `kernel` (tc mirred
redirects net0 <-> svc0 with no userspace at all: the ceiling of this lab).
For each row, direction (net->service, service->net, both at once) and inner
frame size, a *point* is measured `--repeat` times, rows interleaved so that
a disturbance hits them alike, each time with a freshly started forwarder:

1. latency (single directions): `--latency-rate` frames/s in batches of 4,
   each stamped with CLOCK_MONOTONIC just before its sendmmsg; the sink
   takes the time when recvmmsg returns it. One-way p50/p99. "Added" latency
   is that minus the kernel row's, measured the same way in the same lab.
2. throughput: the generator sends at full speed; the first part is a
   warm-up, then a window of `--seconds`. Delivered = frames the sink got
   (plus any its socket had to drop) per second of the window; offered =
   what the generator's sendmmsg got accepted in the window (frames sent
   into the TAP take the path the host's own would, through its qdisc and
   tc egress hooks: the ebpf datapath hooks there). CPU = user +
   system time (/proc/PID/stat) of the forwarder and its child processes
   over the window, per delivered frame and as a share of one CPU; what
   other processes took of that CPU meanwhile (/proc/stat) and how long the
   forwarder waited to run (schedstat): together they show when other load
   on the machine, not the forwarder, set the pace.
3. RSS (VmRSS of the whole process tree) right after start-up and after the
   traffic. Checks: the forwarder's own frame count at exit must equal what
   the sinks received over the whole point, give or take what the kernel
   dropped meanwhile for want of backlog room (softnet_stat), the sinks
   must have seen no more frames than were sent, and frames out of order
   are counted.

CPU pinning: each row gets one core, the last this process may use, for
its forwarding work; generators, sinks and this orchestrator share the
first. A forwarder process is pinned there (every thread, every worker).
In-kernel forwarding (the kernel row; the eBPF datapath's programs on net0)
happens in the receive softirq of the interface the generator sends into,
which would run on the generator's CPU inside its send calls: RPS steers it
(net0, svc0, the segmenter) to the forwarder's core for those rows only.
For a forwarder process the kernel's delivery of offered frames into its
socket stays with the generator, as a NIC's interrupt work stays off a
pinned forwarder's core; steering it too would make a slow forwarder's core
spend its time on frames it then drops. Not steerable: a TAP-egress BPF
program runs in the sender's context. A row is "generator-limited" when delivered ~ offered and
the forwarder's core was under 90% busy, and "contended" when other
processes took 10% or more of that core while the forwarder waited 10% or
more of the window to run.

TCP (`--tcp-seconds`, once per repeat after the points): one iperf3 stream
from "board" to "switch" through two forwarders back to back, set up as
`eoe_filter demo` does, for every datapath row and `c`, against the same
test over a plain veth pair (namespaces of their own; every process free to
use every CPU this command may use). The kernel row has none: tc redirecting
frames unchanged, with no EOE header, makes TCP through it the plain veth.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, Literal, Protocol

from .. import control
from ..datapath import datapaths
from ..ebpf.netdev import SEGMENTER_PREFIX
from ..lab import Lab, enter_netns, in_netns
from .cbuild import build_c_original
from .lab_measure import (
    EOE_HDR,
    INNER_SEQ,
    INNER_TS,
    NET_IF,
    PEER_IF,
    TAP_IF,
    default_cpus,
    eoe_frame,
    inner_frame,
    stop_c_original,
    wait_ready,
)
from .procstat import (
    backlog,
    backlog_drops,
    core_times,
    cpu_seconds,
    ksoftirqd,
    pin,
    process_tree,
    rss_bytes,
    schedstat,
)
from .traffic import (
    FIELD_SIZE,
    Generator,
    GenReport,
    Sink,
    SinkReport,
    expect,
    socket_offset,
)

EX_USAGE, EX_SOFTWARE, EX_NOPERM = 64, 70, 77
LAB_PREFIX = "eoebench"
SVC_IF, SVC_PEER_IF = "svc0", "svc1"
BASELINES = ("c", "kernel")
VARIANTS = {"fast-bypass": ("fast", ("--qdisc-bypass",))}
"""Opt-in rows: a datapath with options (not in the default list: the bypass is opt-in for the forwarder too)."""
Way = Literal["net_to_service", "service_to_net"]
WAYS: tuple[Way, ...] = ("net_to_service", "service_to_net")
DIRECTIONS = (*WAYS, "both")
LABELS = {"net_to_service": "net→service", "service_to_net": "service→net", "both": "both at once"}
MIN_SIZE, MAX_SIZE = INNER_TS + FIELD_SIZE, 9000
SATURATED = 0.90
"""A forwarder using this share of its core or more is CPU-bound."""
NEAR = 0.97
"""Delivered at least this share of offered: the forwarder kept up with the generator."""
CONTENDED = 0.10
"""Other processes took this share of the forwarder's core while it waited as long: short of CPU, not of work."""
DRAIN = {"until_drained": True, "duration": 60.0}
"""The sink run that follows every timed one without a gap, until Endpoint.drained() and an empty queue.

Timed runs end on the clock even with frames queued: a sink that other load
kept off its core would stop reading with a full socket buffer and drop,
uncounted, what comes next. An idle limit could end a run mid-traffic while
the forwarder waits for its core, or wait in vain when everything has come.
"""
READY_TIMEOUT = 20.0
LATENCY_RATE = 20_000
LATENCY_BATCH = 4
INVALID = ("count mismatch", "more frames")
"""Flags that make a row's figures wrong, not merely limited: the command then exits 70."""


# --- traffic endpoints that live for the whole benchmark -------------------------------------------
class _Drained:
    """A Sink.run `stop` that holds once the parent said the forwarder is done and nothing is left to read."""

    def __init__(self, done: MpEvent, fd: int) -> None:
        self.done, self.fd = done, fd

    def is_set(self) -> bool:
        return self.done.is_set() and not select.select([self.fd], [], [], 0)[0]


def _packet_socket() -> int:
    """The descriptor of this process's packet socket (a Sink's)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=int(name))
        try:
            if sock.family == socket.AF_PACKET:
                return int(name)
        finally:
            sock.detach()
    raise RuntimeError("no packet socket open")


def _endpoint_main(conn: Connection, done: MpEvent, netns: str, cpu: int) -> None:
    """Serve ("open", factory), ("run", [run kwargs, ...]) and ("close", None) until the pipe closes.

    Ctrl-C reaches the whole process group; stopping is the parent's call.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner: Generator | Sink | None = None
    try:
        enter_netns(netns)
        os.sched_setaffinity(0, {cpu})
        reply: tuple[str, Any] = ("ok", None)
    except Exception:  # noqa: BLE001 - the parent reports it
        reply = ("error", traceback.format_exc())
    try:
        while True:
            conn.send(reply)
            op, arg = conn.recv()
            try:
                if op == "run":
                    assert runner is not None, "run before open"
                    reports = []
                    for kwargs in arg:
                        if kwargs.pop("until_drained", False):
                            kwargs["stop"] = _Drained(done, _packet_socket())
                        reports.append(runner.run(**kwargs))
                    reply = ("ok", reports)
                    continue
                if runner is not None:
                    runner.close()
                    runner = None
                if op == "open":
                    runner = arg()
                reply = ("ok", None)
            except Exception:  # noqa: BLE001 - the parent reports it
                reply = ("error", traceback.format_exc())
    except (EOFError, OSError):
        pass  # the parent closed its end: the benchmark is over
    finally:
        if runner is not None:
            runner.close()


class Endpoint:
    """A generator or sink process pinned in a namespace for the whole benchmark.

    traffic.InNetns runs one Generator or Sink once per child; a point here
    needs several runs (latency, warm-up, window, drain) on a socket that
    stays bound, a drain that ends when the parent says so, and respawning
    an interpreter per run would cost more than a --quick point's traffic.
    """

    def __init__(self, netns: str, cpu: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._done = ctx.Event()
        self._proc = ctx.Process(target=_endpoint_main, args=(child, self._done, netns, cpu), daemon=True)
        self._proc.start()
        child.close()
        self._expect(30.0)

    def _expect(self, timeout: float | None) -> Any:
        return expect(self._conn, self._proc, "an answer", timeout)

    def open(self, factory: Callable[[], Generator | Sink]) -> None:
        """Build the runner (a sink counts from here on)."""
        self._conn.send(("open", factory))
        self._expect(30.0)

    def start(self, *runs: dict[str, Any]) -> None:
        """Start the runner's runs, one after the other without a gap."""
        self._done.clear()
        self._conn.send(("run", list(runs)))

    def drained(self) -> None:
        """Nothing more will come: a DRAIN run ends as soon as its socket's queue is empty."""
        self._done.set()

    def result(self, timeout: float) -> list[Any]:
        return self._expect(timeout)  # type: ignore[no-any-return]

    def release(self) -> None:
        """Close the runner (before the forwarder's TAP goes away)."""
        self._conn.send(("close", None))
        self._expect(30.0)

    def close(self) -> None:
        """End the process (ours, by its PID); one still running traffic is terminated after a second."""
        self._conn.close()
        self._proc.join(1)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


# --- what forwards during one point ---------------------------------------------------------------
class Skip(Exception):
    """This row cannot be measured here (no compiler, datapath unavailable, no tc): the reason."""


class Dut(Protocol):
    """The device under test of one point: started fresh, stopped with its own frame counts."""

    def usage(self) -> tuple[float, float] | None:
        """(CPU seconds used, seconds runnable but waiting for a CPU) so far; None: no process forwards."""

    def rss(self) -> int | None: ...

    def processes(self) -> list[int]:
        """The PIDs that forward (none where the kernel alone does)."""

    def stop(self) -> dict[Way, int]:
        """Frames it counted as forwarded per way."""


class ForwarderProcess:
    """eoe_filter --datapath NAME (with `extra` options), or c_original, on net0 with TAP tapc; its process
    tree pinned to `cpus`."""

    def __init__(self, lab: Lab, ns: str, name: str, binary: Path | None, log: Path, cpus: Collection[int],
                 extra: Sequence[str] = ()) -> None:
        self.name, self.log = name, log
        with open(log, "w") as out:
            if name == "c":
                assert binary is not None, "a skipped C row never starts"
                self.proc = lab.start(ns, [str(binary), "-n", NET_IF, "-t", TAP_IF, *extra], stdout=subprocess.PIPE,
                                      stderr=out, text=True)
                wait_ready(self.proc, READY_TIMEOUT)
            else:
                datapath, options = VARIANTS.get(name, (name, ()))
                self.proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", "-n", NET_IF, "-t", TAP_IF, "-E",
                                           "--datapath", datapath, *options, *extra], stdout=out,
                                      stderr=subprocess.STDOUT)
                self._wait_ready(ns)
        self.tree = process_tree(self.proc.pid)
        pin(self.tree, cpus)

    def _wait_ready(self, ns: str) -> None:
        """Ready when its control endpoint answers: it opens only after the datapath has started."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with in_netns(ns):
                if control.query(TAP_IF, timeout=0.5) is not None:
                    return
            if self.proc.poll() is not None:
                lines = self.log.read_text().strip().splitlines()
                raise Skip(f"--datapath {self.name} exited {self.proc.returncode}: "
                           + (lines[-1] if lines else "no output"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"--datapath {self.name} not ready in {READY_TIMEOUT:.0f} s; see {self.log}")
            time.sleep(0.02)

    def usage(self) -> tuple[float, float]:
        return cpu_seconds(self.tree), schedstat(self.tree)[1]

    def processes(self) -> list[int]:
        return self.tree

    def rss(self) -> int:
        return rss_bytes(self.tree)

    def stop(self) -> dict[Way, int]:
        if self.name == "c":
            counters = stop_c_original(self.proc)
            return {"net_to_service": counters["net_to_tap"]["fwd"], "service_to_net": counters["tap_to_net"]["fwd"]}
        self.proc.send_signal(signal.SIGTERM)
        if (rc := self.proc.wait(15)) != 0:
            raise RuntimeError(f"--datapath {self.name} exited {rc}; see {self.log}")
        summary = re.findall(r"^\s*(net to service|service to net): (\d+) frames", self.log.read_text(), re.MULTILINE)
        found = dict(summary)
        if len(found) != 2:
            raise RuntimeError(f"--datapath {self.name} printed no exit counters; see {self.log}")
        return {"net_to_service": int(found["net to service"]), "service_to_net": int(found["service to net"])}


class KernelRedirect:
    """tc mirred: net0 ingress -> svc0 egress and back; the frames cross unchanged."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.lab, self.ns = lab, ns
        for src, dst in ((NET_IF, SVC_IF), (SVC_IF, NET_IF)):
            self._tc("qdisc", "add", "dev", src, "clsact")
            self._tc("filter", "add", "dev", src, "ingress", "protocol", "all", "u32", "match", "u32", "0", "0",
                     "action", "mirred", "egress", "redirect", "dev", dst)

    def _tc(self, *args: str) -> str:
        done = self.lab.run(self.ns, ["tc", *args])
        if done.returncode != 0:
            self._remove()
            raise Skip(f"tc {' '.join(args)}: {done.stderr.strip()} (needs cls_u32 and act_mirred)")
        return done.stdout

    def _remove(self) -> None:
        for dev in (NET_IF, SVC_IF):
            self.lab.run(self.ns, ["tc", "qdisc", "del", "dev", dev, "clsact"])

    def usage(self) -> None:
        """No process forwards: the work is done in softirq on the sender's CPU."""

    def rss(self) -> None: ...

    def processes(self) -> list[int]:
        return []

    def stop(self) -> dict[Way, int]:
        """The mirred actions' packet counts, then the qdiscs removed (the forwarders' rows must not see them)."""
        counts = {}
        for way, dev in (("net_to_service", NET_IF), ("service_to_net", SVC_IF)):
            filters = json.loads(self._tc("-s", "-j", "filter", "show", "dev", dev, "ingress"))
            counts[way] = sum(a["stats"]["packets"] for f in filters for a in f.get("options", {}).get("actions", []))
        self._remove()
        return counts  # type: ignore[return-value]


# --- one measured point -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Run:
    """One repetition of one point. Rates in frames/s; None: not measured for this row or direction."""

    offered: float
    delivered: float
    refused: int
    """Sends the kernel refused (a full queue: back-pressure from the forwarder), retried by the generator."""
    window: float
    cpu_share: float | None
    core_share: float
    """Share of the window the forwarder's core was busy with anything: processes, irq, softirq."""
    other_share: float | None
    """Share of the forwarder's core that other processes (or the hypervisor) used during the window."""
    wait_share: float | None
    """Time its threads were runnable but not running, / window (its own threads waiting for each other count)."""
    cpu_ns_per_frame: float | None
    rss_start: int | None
    rss_end: int | None
    latency_p50_ns: int | None
    latency_p99_ns: int | None
    latency_samples: int
    sent: int
    """Frames the generators' sends were accepted for over the whole point (latency phase and warm-up included)."""
    sink_frames: int
    sink_drops: int
    sink_late: int
    """Frames the sink saw after a later sequence number: duplicated or reordered on the way."""
    path_drops: int
    """Frames the kernel dropped during the point because a CPU's backlog was full (softnet_stat)."""
    forwarder_frames: int
    """What the forwarder (or the kernel's tc action) counted as forwarded, at exit."""
    steered: bool
    """In-kernel forwarding: net0's and svc0's receive processing ran on the forwarder's CPU (RPS)."""

    @property
    def counts_match(self) -> bool:
        """The forwarder's count is what reached the sink's socket, give or take the kernel's drops between.

        Whether a backlog drop comes before or after the forwarder counts
        depends on where: a send to the veth does not learn of it, an eBPF
        redirect does, and the input side drops before any forwarder.
        """
        reached = self.sink_frames + self.sink_drops
        return reached <= self.forwarder_frames <= reached + self.path_drops


@dataclass(frozen=True)
class Settings:
    rows: tuple[str, ...]
    sizes: tuple[int, ...]
    repeat: int
    seconds: float
    warmup: float
    latency_seconds: float
    latency_rate: float
    cpus: tuple[int, int, int]
    """(generator, forwarder, sink)"""
    tcp_seconds: int
    """iperf3's -t for the TCP section; 0: no TCP section."""
    all_cpus: tuple[int, ...]
    """The CPUs this command may use, all of them open to the TCP section's processes."""


class Bench:
    """The lab, the traffic endpoints and the C binary, for the whole benchmark."""

    def __init__(self, settings: Settings, lab: Lab, stack: ExitStack, workdir: Path) -> None:
        self.s, self.lab, self.workdir = settings, lab, workdir
        self.dut, self.peer = lab.netns("dut"), lab.netns("peer")
        mtu = max(1500, max(settings.sizes) + 4)  # TAP MTU = MTU - 18 carries the inner frame + 14
        lab.veth(self.dut, NET_IF, self.peer, PEER_IF, mtu=mtu)
        lab.veth(self.dut, SVC_IF, self.dut, SVC_PEER_IF, mtu=mtu)
        gen_cpu, fwd_cpu, sink_cpu = settings.cpus
        self.notes: list[str] = []
        self.rps = self._steer(fwd_cpu)
        if not self.rps:
            self.notes.append("RPS unavailable: the kernel row and in-kernel datapaths forward on the generator's "
                              "CPU, within its send calls (generator-limited)")
        softirq = ksoftirqd()
        self.ksoftirqd = list(softirq.values())
        self.softirq = [pid for cpu, pid in softirq.items() if cpu == fwd_cpu]
        """The forwarder CPU's softirq thread: its time is our traffic's kernel work, not other load."""
        self.gens = {way: stack.enter_context(closing(Endpoint(self.peer if way == WAYS[0] else self.dut, gen_cpu)))
                     for way in WAYS}
        self.sinks = {way: stack.enter_context(closing(Endpoint(self.dut if way == WAYS[0] else self.peer,
                                                                 sink_cpu))) for way in WAYS}
        self.binary: Path | None = None
        self.skipped: dict[str, str] = {}
        if "c" in settings.rows:
            built = build_c_original(workdir)
            if built.binary is None:
                self.skipped["c"] = f"C baseline skipped: {built.reason}"
                self.notes.append(self.skipped["c"])
            self.binary = built.binary

    def _steer(self, cpu: int | None) -> bool:
        """Steer the receive processing of net0, svc0 and an eBPF datapath's segmenter to `cpu` with RPS
        (None: where the sender runs)."""
        mask = 0 if cpu is None else 1 << cpu
        script = f"for q in /sys/class/net/{NET_IF}/queues/rx-* /sys/class/net/{SVC_IF}/queues/rx-* " \
                 f"/sys/class/net/{SEGMENTER_PREFIX}*/queues/rx-*; " \
                 f"do [ -e $q ] || continue; echo {mask:x} > $q/rps_cpus || exit 1; done"
        return self.lab.run(self.dut, ["sh", "-c", script]).returncode == 0

    @staticmethod
    def _in_kernel(name: str) -> bool:
        """Whether this row forwards in the kernel's receive path: the kernel row, or the eBPF datapath
        (asked for by name, it fails rather than fall back)."""
        return name in ("kernel", "ebpf")

    def _settle(self, dut: Dut, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Wait until nothing is left in flight: no frame in a CPU backlog, and neither the forwarder's threads
        nor the softirq threads ran or waited to run for `quiet` seconds.

        A forwarder with frames queued is running or runnable, also when
        other load keeps it off its core; the kernel's part of the path can
        lag behind it in ksoftirqd. Only then may a sink stop reading and
        the forwarder's count be compared with the sink's.
        """
        pids = dut.processes() + self.ksoftirqd
        deadline = time.monotonic() + timeout
        before = sum(schedstat(pids))
        while time.monotonic() < deadline:
            time.sleep(quiet)
            if (now := sum(schedstat(pids))) == before and not backlog():
                return
            before = now

    def _busy(self) -> tuple[float, float]:
        """CPU seconds the forwarder's core was busy: at all, and with processes other than its softirq thread."""
        busy, tasks = core_times(self.s.cpus[1])
        return busy, tasks - cpu_seconds(self.softirq)

    def _start(self, name: str) -> Dut:
        if name == "kernel":
            return KernelRedirect(self.lab, self.dut)
        return ForwarderProcess(self.lab, self.dut, name, self.binary, self.workdir / f"{name}.log", {self.s.cpus[1]})

    def _ends(self, name: str, way: Way, size: int, batch: int) -> tuple[Callable[[], Generator], Callable[[], Sink]]:
        """Generator and sink factories; the kernel row sends the EOE frames a forwarder would put on net0."""
        inner = inner_frame(size)
        tagged = functools.partial(Sink, seq_offset=socket_offset(EOE_HDR + INNER_SEQ, tagged=True),
                                   ts_offset=socket_offset(EOE_HDR + INNER_TS, tagged=True))
        eoe = functools.partial(Generator, frame=eoe_frame(inner), batch=batch, seq_offset=EOE_HDR + INNER_SEQ,
                                ts_offset=EOE_HDR + INNER_TS)
        if way == "net_to_service":
            sink = functools.partial(tagged, SVC_PEER_IF) if name == "kernel" else functools.partial(
                Sink, TAP_IF, seq_offset=INNER_SEQ, ts_offset=INNER_TS)
            return functools.partial(eoe, PEER_IF), sink  # type: ignore[return-value]
        gen = functools.partial(eoe, SVC_PEER_IF) if name == "kernel" else functools.partial(
            Generator, TAP_IF, inner, batch=batch, seq_offset=INNER_SEQ, ts_offset=INNER_TS, qdisc_bypass=False)
        return gen, functools.partial(tagged, PEER_IF)  # type: ignore[return-value]

    def point(self, name: str, direction: str, size: int) -> Run:
        """Latency (single directions), then warm-up and the measured window, with a fresh forwarder."""
        if name in self.skipped:
            raise Skip(self.skipped[name])
        s = self.s
        ways: tuple[Way, ...] = WAYS if direction == "both" else (direction,)  # type: ignore[assignment]
        gen_runs: list[GenReport] = []
        sink_runs: list[SinkReport] = []
        dut = self._start(name)
        try:
            steered = self.rps and self._in_kernel(name)
            self._steer(s.cpus[1] if steered else None)
            rss_start = dut.rss()
            dropped0 = backlog_drops()
            for way in ways:
                self.sinks[way].open(self._ends(name, way, size, LATENCY_BATCH)[1])
            latency = None
            if direction != "both":
                gen, sink = self.gens[ways[0]], self.sinks[ways[0]]
                gen.open(self._ends(name, ways[0], size, LATENCY_BATCH)[0])
                sink.start({"duration": s.latency_seconds}, DRAIN)
                gen.start({"duration": s.latency_seconds, "rate": s.latency_rate})
                gen_runs += gen.result(s.latency_seconds + 30)
                self._settle(dut)
                sink.drained()
                sink_runs += (got := sink.result(30))
                latency = got[0].latency
            for way in ways:
                self.gens[way].open(self._ends(name, way, size, 256)[0])
            for way in ways:
                self.sinks[way].start({"duration": s.warmup}, {"duration": s.seconds}, DRAIN)
            for way in ways:
                self.gens[way].start({"duration": s.warmup}, {"duration": s.seconds})
            time.sleep(s.warmup)
            use0, busy0, t0 = dut.usage(), self._busy(), time.monotonic()
            time.sleep(s.seconds)
            use1, busy1, t1 = dut.usage(), self._busy(), time.monotonic()
            offered, delivered = [], []  # each way's window run, the second (after the warm-up)
            for way in ways:
                gen_runs += (got := self.gens[way].result(s.warmup + s.seconds + 30))
                offered.append(got[1])
            self._settle(dut)
            for way in ways:
                self.sinks[way].drained()
            for way in ways:
                sink_runs += (got := self.sinks[way].result(90))
                delivered.append(got[1])
            rss_end = dut.rss()
            dropped = backlog_drops() - dropped0
            for way in ways:
                self.sinks[way].release()
        finally:
            counted = dut.stop()
            self._settle(dut)  # what it sent on its way out must not reach the next point's sinks
        rate = sum(w.rate + (w.socket_drops / w.seconds if w.seconds > 0 else 0.0) for w in delivered)
        window = t1 - t0
        used, waited = (None, None) if use0 is None or use1 is None else (use1[0] - use0[0], use1[1] - use0[1])
        return Run(
            offered=sum(g.rate for g in offered), delivered=rate, refused=sum(g.refused for g in offered),
            window=window, cpu_share=None if used is None else used / window,
            core_share=(busy1[0] - busy0[0]) / window,
            other_share=None if used is None else max(0.0, busy1[1] - busy0[1] - used) / window,
            wait_share=None if waited is None else waited / window,
            cpu_ns_per_frame=None if used is None or not rate else used * 1e9 / (rate * window),
            rss_start=rss_start, rss_end=rss_end,
            latency_p50_ns=latency.p50 if latency else None, latency_p99_ns=latency.p99 if latency else None,
            latency_samples=latency.samples if latency else 0,
            sent=sum(g.frames for g in gen_runs),
            sink_frames=sum(r.frames for r in sink_runs), sink_drops=sum(r.socket_drops for r in sink_runs),
            sink_late=sum(r.late for r in sink_runs), path_drops=dropped, steered=steered,
            forwarder_frames=sum(counted[way] for way in ways))


# --- TCP through two forwarders --------------------------------------------------------------------
BOARD_IP, SWITCH_IP = "169.254.17.4", "169.254.17.1"
IPERF_PORT = 5201
MIRROR = ("--op-code", "1", "--downstream", "1", "--dmac", "06:00:00:00:00:78", "--smac", "06:00:00:00:00:f8")
"""The switch side of `eoe_filter demo`: the board's mirror image, so that the board's -F accepts its frames."""


class TcpFailed(Exception):
    """iperf3 did not complete (no connection through the forwarders, or an error): its message."""


class TcpTest:
    """One iperf3 TCP stream, board -> switch: through two forwarders back to back, or over a plain veth pair.

    The forwarders are set up as `eoe_filter demo` does (board -F, switch its
    mirror image); two c_original run without options, as they have none of
    those: each decapsulates whatever reaches it. Both set-ups keep their
    namespaces for the whole benchmark; forwarders start fresh for every run.
    """

    def __init__(self, lab: Lab, workdir: Path, binary: Path | None, settings: Settings) -> None:
        self.lab, self.workdir, self.binary = lab, workdir, binary
        self.seconds, self.cpus = settings.tcp_seconds, settings.all_cpus
        self.runs: dict[str, list[float]] = {name: [] for name in ("veth", *settings.rows) if name != "kernel"}
        self.skipped: dict[str, str] = {}
        self.failures: list[str] = []
        self.board, self.switch = lab.netns("board"), lab.netns("switch")
        lab.veth(self.board, NET_IF, self.switch, NET_IF)
        self.left, self.right = lab.netns("veth-a"), lab.netns("veth-b")
        lab.veth(self.left, NET_IF, self.right, NET_IF)
        for ns, ip in ((self.left, BOARD_IP), (self.right, SWITCH_IP)):
            lab.run(ns, ["ip", "addr", "add", f"{ip}/24", "dev", NET_IF], check=True)

    @contextmanager
    def _unpinned(self) -> Iterator[None]:
        """Let what starts meanwhile use every CPU (children inherit this process's affinity)."""
        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, own)

    def round(self, k: int, repeat: int, failed: dict[str, str]) -> None:
        """Run k of every path, the plain veth first; a row that could not start for the points is skipped."""
        for name, runs in self.runs.items():
            where = f"[tcp {k}/{repeat}] {name}"
            if name in failed:
                self.skipped.setdefault(name, failed[name])
            if name in self.skipped:
                continue
            try:
                runs.append(got := self.mbps(name))
            except Skip as e:
                self.skipped[name] = str(e)
                _progress(f"{where}: skipped: {e}")
                continue
            except TcpFailed as e:
                self.failures.append(f"{name} run {k}: {e}")
                _progress(f"{where}: FAILED: {e}")
                continue
            _progress(f"{where}: {got:,.0f} Mbit/s")

    def report(self) -> dict[str, Any]:
        """The TCP section of the JSON document: per path the median Mbit/s with min-max, and its ratio to veth."""
        base = spread(self.runs["veth"])
        rows = []
        for name, found in self.runs.items():
            mbps = spread(found)
            rows.append({"datapath": name, "skipped": self.skipped.get(name), "mbps": mbps,
                         "ratio_to_veth": mbps["median"] / base["median"] if mbps and base and base["median"] else None,
                         "runs_mbps": found})
        return {"seconds": self.seconds, "skipped": None, "rows": rows, "failures": self.failures}

    def mbps(self, name: str) -> float:
        """Mbit/s the switch's iperf3 received through two forwarders `name`, or over the veth pair ("veth")."""
        with self._unpinned():
            if name == "veth":
                return self._iperf(self.left, self.right)
            started: list[ForwarderProcess] = []
            try:
                for ns, role, extra in ((self.switch, "switch", MIRROR), (self.board, "board", ("-F",))):
                    started.append(ForwarderProcess(self.lab, ns, name, self.binary,
                                                    self.workdir / f"tcp-{name}-{role}.log", self.cpus,
                                                    () if name == "c" else extra))
                for ns, ip in ((self.board, BOARD_IP), (self.switch, SWITCH_IP)):
                    self.lab.run(ns, ["ip", "addr", "add", f"{ip}/24", "dev", TAP_IF], check=True)
                return self._iperf(self.board, self.switch)
            finally:
                for fwd in started:
                    fwd.stop()

    def _iperf(self, client: str, server: str) -> float:
        proc = self.lab.start(server, ["iperf3", "-s", "-1", "-B", SWITCH_IP, "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_listening(server, proc)
            done = self.lab.run(client, ["iperf3", "-c", SWITCH_IP, "-p", str(IPERF_PORT), "-t", str(self.seconds),
                                         "--connect-timeout", "5000", "-J"], timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            raise TcpFailed(f"iperf3 did not finish in {self.seconds + 30} s") from None
        finally:
            try:
                proc.wait(5)  # -1: the server exits after one test
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait(5)
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise TcpFailed(done.stderr.strip() or f"iperf3 exited {done.returncode}") from None
        if done.returncode != 0 or "error" in result:
            raise TcpFailed(result.get("error") or f"iperf3 exited {done.returncode}")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6

    def _wait_listening(self, ns: str, proc: subprocess.Popen[bytes]) -> None:
        """A client that came first would be refused: wait for the server's listening socket."""
        deadline = time.monotonic() + 10
        while not self.lab.run(ns, ["ss", "-Htln", f"sport = :{IPERF_PORT}"]).stdout.strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TcpFailed(f"the iperf3 server did not listen (exit status {proc.poll()})")
            time.sleep(0.05)


# --- summaries ------------------------------------------------------------------------------------
def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median, min and max of the measured values (None where none was measured)."""
    found = [v for v in values if v is not None and not math.isnan(v)]
    if not found:
        return None
    return {"median": statistics.median(found), "min": min(found), "max": max(found)}


@dataclass
class Row:
    datapath: str
    direction: str
    size: int
    runs: list[Run] = field(default_factory=list)
    skipped: str | None = None

    def figure(self, name: str) -> dict[str, float] | None:
        return spread([getattr(r, name) for r in self.runs])

    def median(self, name: str) -> float | None:
        got = self.figure(name)
        return None if got is None else got["median"]

    def flags(self) -> list[str]:
        """Why a figure may not be the forwarder's own limit, or may be wrong."""
        out = ["in-kernel: RPS-steered to its core"] if any(r.steered for r in self.runs) else []
        delivered, offered = self.median("delivered"), self.median("offered")
        core, other, wait = self.median("core_share"), self.median("other_share"), self.median("wait_share")
        if delivered and offered and delivered >= NEAR * offered and core is not None and core < SATURATED:
            out.append("generator-limited")
        if other is not None and wait is not None and min(other, wait) >= CONTENDED:
            out.append(f"contended: other load took {other:.0%} of its core, its threads waited {wait:.0%}")
        drops = sum(r.sink_drops for r in self.runs)
        if drops:
            out.append(f"sink dropped {drops}")
        lost = sum(r.path_drops for r in self.runs)
        if lost:
            out.append(f"kernel backlog dropped {lost}")
        late = sum(r.sink_late for r in self.runs)
        if late:
            out.append(f"out of order: {late} frames (reordered or duplicated)")
        if any(r.sink_frames + r.sink_drops > r.sent for r in self.runs):
            out.append("more frames delivered than sent")
        bad = [r for r in self.runs if not r.counts_match]
        if bad:
            out.append("count mismatch: " + ", ".join(f"forwarder {r.forwarder_frames}, sink {r.sink_frames} "
                                                       f"+ {r.sink_drops} + backlog drops {r.path_drops}"
                                                       for r in bad))
        return out


def _ratio(rows: dict[tuple[str, str, int], Row], row: Row, field_name: str, base: str) -> float | None:
    other = rows.get((base, row.direction, row.size))
    mine, theirs = row.median(field_name), other.median(field_name) if other else None
    return mine / theirs if mine is not None and theirs else None


def _added(rows: dict[tuple[str, str, int], Row], row: Row, field_name: str) -> float | None:
    kernel = rows.get(("kernel", row.direction, row.size))
    mine, base = row.median(field_name), kernel.median(field_name) if kernel else None
    return None if mine is None or base is None or row.datapath == "kernel" else mine - base


def report(settings: Settings, rows: list[Row], tcp: dict[str, Any] | None, lab: str, notes: list[str],
           elapsed: float) -> dict[str, Any]:
    """The JSON document: settings, then per row medians with min-max, ratios, checks and every run; the TCP
    section (None: not measured)."""
    index = {(r.datapath, r.direction, r.size): r for r in rows}
    out_rows = []
    for r in rows:
        fps = r.figure("delivered")
        out_rows.append({
            "datapath": r.datapath, "direction": r.direction, "inner_size": r.size, "skipped": r.skipped,
            "delivered_fps": fps,
            "delivered_bps": None if fps is None else {k: v * r.size * 8 for k, v in fps.items()},
            "offered_fps": r.figure("offered"),
            "ratio_to_c": _ratio(index, r, "delivered", "c"),
            "ratio_to_kernel": _ratio(index, r, "delivered", "kernel"),
            "cpu_ns_per_frame": r.figure("cpu_ns_per_frame"),
            "cpu_share": r.figure("cpu_share"),
            "core_share": r.figure("core_share"),
            "other_share": r.figure("other_share"),
            "wait_share": r.figure("wait_share"),
            "latency_us": None if r.direction == "both" else {
                "p50": _us(r.figure("latency_p50_ns")), "p99": _us(r.figure("latency_p99_ns"))},
            "added_latency_us": None if r.direction == "both" or r.datapath == "kernel" else {
                "p50": _scale(_added(index, r, "latency_p50_ns"), 1e-3),
                "p99": _scale(_added(index, r, "latency_p99_ns"), 1e-3)},
            "rss_start_bytes": r.figure("rss_start"), "rss_end_bytes": r.figure("rss_end"),
            "flags": r.flags(),
            "runs": [asdict(run) | {"counts_match": run.counts_match} for run in r.runs],
        })
    s = settings
    return {
        "lab": lab, "elapsed_seconds": round(elapsed, 1),
        "machine": {"kernel": platform.release(), "arch": platform.machine(), "python": platform.python_version(),
                    "cpus_usable": sorted(os.sched_getaffinity(0))},
        "settings": {"datapaths": list(s.rows), "sizes": list(s.sizes), "repeat": s.repeat, "seconds": s.seconds,
                     "warmup_seconds": s.warmup, "latency_seconds": s.latency_seconds,
                     "latency_rate_fps": s.latency_rate, "tcp_seconds": s.tcp_seconds,
                     "cpus": {"generator": s.cpus[0], "forwarder": s.cpus[1], "sink": s.cpus[2]}},
        "definitions": DEFINITIONS,
        "notes": notes,
        "rows": out_rows,
        "tcp": tcp,
    }


def _us(figure: dict[str, float] | None) -> dict[str, float] | None:
    return None if figure is None else {k: v / 1000 for k, v in figure.items()}


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


DEFINITIONS = {
    "delivered_fps": "frames the sink received (plus those its socket dropped) per second of the measured window",
    "delivered_bps": "delivered_fps x inner frame size x 8: the service's payload, no EOE header, no preamble/IFG",
    "offered_fps": "frames the generator's sendmmsg got accepted per second of the same window",
    "ratio_to_c": "delivered_fps / the C original's delivered_fps for the same direction and size",
    "cpu_ns_per_frame": "user+system time of the forwarder and its child processes over the window (/proc/PID/stat) "
                        "per delivered frame; kernel work done on other CPUs (softirq on the sender's CPU) is not "
                        "in it, so the ebpf row shows its control plane only",
    "cpu_share": "the same CPU time / window length: 1.0 is the whole core the forwarder is pinned to",
    "core_share": "time that core was busy with anything (processes, irq, softirq: where the kernel rows "
                  "forward) / window length",
    "other_share": "user+system+steal time of the forwarder's core (/proc/stat) minus the forwarder's own and its "
                   "ksoftirqd's, / window length: what other processes on this machine took from it",
    "wait_share": "time the forwarder's threads were runnable but not running (schedstat) / window length",
    "latency_us": "one-way, generator's CLOCK_MONOTONIC stamp before sendmmsg (batches of 4) to the sink's clock "
                  "after recvmmsg, at the light load latency_rate_fps",
    "added_latency_us": "latency_us minus the kernel row's (same frames, same veth, tc mirred instead of a "
                        "forwarder): p50 - p50 and p99 - p99",
    "rss_*_bytes": "VmRSS of the forwarder's process tree after start-up and after the point's traffic",
    "generator-limited": f"delivered >= {NEAR:.0%} of offered and the forwarder's core was busy < "
                         f"{SATURATED:.0%} of the window (its processes, irq and softirq): the figure is a lower "
                         "bound",
    "contended": f"other processes took >= {CONTENDED:.0%} of the forwarder's core while it waited >= "
                 f"{CONTENDED:.0%} of the window to run: the figure is lower (and the latency higher) than on an "
                 "idle machine",
    "tcp.mbps": "TCP section: what iperf3's server received per second (one stream, board -> switch, iperf3 -t "
                "tcp_seconds), through two forwarders back to back (board -F, switch its mirror image, as in "
                "`eoe_filter demo`; c: two c_original without options) or, for veth, over a plain veth pair",
    "tcp.ratio_to_veth": "mbps / the plain veth pair's mbps; the kernel row has no TCP figure: without a "
                         "forwarder, TCP over this lab is the plain veth pair",
}


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(doc: dict[str, Any]) -> str:
    """The summary table, one block per direction and size, then what the columns mean."""
    s = doc["settings"]
    lines = [(f"eoe_filter bench: medians of {s['repeat']} run(s) (min-max), {s['seconds']:g} s window after "
              f"{s['warmup_seconds']:g} s warm-up; CPUs: generator+sink {s['cpus']['generator']}, "
              f"forwarder {s['cpus']['forwarder']}; kernel {doc['machine']['kernel']}")]
    head = (f"  {'datapath':<8} {'delivered frames/s':<26} {'bit/s':>7} {'vs C':>5} {'offered/s':>9} "
            f"{'cpu ns/fr':>9} {'cpu':>4} {'core':>4} {'othr':>4} {'lat p50/p99 µs':>15} {'added p50/p99':>14} {'RSS MiB':>11}  notes")
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        groups.setdefault((r["direction"], r["inner_size"]), []).append(r)
    for (direction, size), rows in groups.items():
        lines += ["", f"{LABELS[direction]}, {size}-byte inner frames", head]
        for r in rows:
            if r["skipped"]:
                lines.append(f"  {r['datapath']:<8} skipped: {r['skipped']}")
                continue
            d, lat, add = r["delivered_fps"], r["latency_us"], r["added_latency_us"]
            rss0, rss1, ns = r["rss_start_bytes"], r["rss_end_bytes"], r["cpu_ns_per_frame"]
            rss = "-" if rss0 is None else f"{rss0['median'] / 2**20:.1f}→{rss1['median'] / 2**20:.1f}"
            lines.append(
                f"  {r['datapath']:<8} {_si(d['median']) + ' (' + _si(d['min']) + '-' + _si(d['max']) + ')':<26} "
                f"{_si(r['delivered_bps']['median']):>7} {_num(r['ratio_to_c'], '.2f'):>5} "
                f"{_si(r['offered_fps']['median']):>9} {_num(ns and ns['median'], ',.0f'):>9} "
                f"{_share(r['cpu_share']):>4} {_share(r['core_share']):>4} {_share(r['other_share']):>4} "
                f"{_pair(lat and _medians(lat), '.0f'):>15} {_pair(add, '+.0f'):>14} {rss:>11}"
                + ("  " + "; ".join(r["flags"]) if r["flags"] else ""))
    lines += render_tcp(doc["tcp"])
    lines += ["", "columns:"] + [f"  {k}: {v}" for k, v in doc["definitions"].items()]
    lines += [f"note: {n}" for n in doc["notes"]]
    lines.append(f"lab {doc['lab']} removed; {doc['elapsed_seconds']:.0f} s in all")
    return "\n".join(lines)


def render_tcp(tcp: dict[str, Any] | None) -> list[str]:
    """The TCP section: one line per path, the plain veth pair first."""
    if tcp is None:
        return []
    lines = ["", f"TCP through two forwarders (iperf3, {tcp['seconds']} s)"]
    if tcp["skipped"]:
        return [*lines, f"  skipped: {tcp['skipped']}"]
    lines.append(f"  {'datapath':<8} {'Mbit/s':<26} {'vs veth':>7}")
    for r in tcp["rows"]:
        m = r["mbps"]
        if r["skipped"] or m is None:
            lines.append(f"  {r['datapath']:<8} {'skipped: ' + r['skipped'] if r['skipped'] else 'no run completed'}")
            continue
        mbps = f"{m['median']:,.0f} ({m['min']:,.0f}-{m['max']:,.0f})"
        lines.append(f"  {r['datapath']:<8} {mbps:<26} {_num(r['ratio_to_veth'], '.3f'):>7}"
                     + ("  (plain veth pair, no forwarder)" if r["datapath"] == "veth" else ""))
    return lines + [f"  failed: {f}" for f in tcp["failures"]]


def _share(figure: dict[str, float] | None) -> str:
    return "-" if figure is None else format(figure["median"], ".0%")


def _medians(latency: dict[str, dict[str, float] | None]) -> dict[str, float | None]:
    return {k: None if v is None else v["median"] for k, v in latency.items()}


def _pair(values: dict[str, float | None] | None, fmt: str) -> str:
    if values is None or values["p50"] is None or values["p99"] is None:
        return "-"
    return f"{values['p50']:{fmt}}/{values['p99']:{fmt}}"


def chart(doc: dict[str, Any], path: Path) -> None:
    """Frames/s per datapath and frame size, one panel per direction, bars with min-max whiskers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if not r["skipped"]]
    names = list(dict.fromkeys(r["datapath"] for r in rows))
    sizes = doc["settings"]["sizes"]
    fig, axes = plt.subplots(1, len(DIRECTIONS), figsize=(5 * len(DIRECTIONS), 4.5), sharey=True)
    width = 0.8 / max(1, len(names))
    for ax, direction in zip(axes, DIRECTIONS):
        for i, name in enumerate(names):
            found = {r["inner_size"]: r["delivered_fps"] for r in rows
                     if r["datapath"] == name and r["direction"] == direction}
            xs = [j + (i - (len(names) - 1) / 2) * width for j, size in enumerate(sizes) if size in found]
            med = [found[size]["median"] for size in sizes if size in found]
            err = [[found[size]["median"] - found[size]["min"] for size in sizes if size in found],
                   [found[size]["max"] - found[size]["median"] for size in sizes if size in found]]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=name)
        ax.set_title(LABELS[direction])
        ax.set_xticks(range(len(sizes)), [f"{size} B" for size in sizes])
        ax.set_xlabel("inner frame size")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("delivered frames/s (median, min-max)")
    axes[-1].legend()
    fig.suptitle(f"eoe_filter bench ({doc['settings']['repeat']} runs, {doc['settings']['seconds']:g} s each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------------
def _rows_of(text: str) -> tuple[str, ...]:
    known = [*(name for name in datapaths() if name != "auto"), *VARIANTS, *BASELINES]
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known and n != "auto"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or 'empty list'}; choose from "
                                         f"{', '.join(known)}")
    return names


def _sizes_of(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(v) for v in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of byte counts") from None
    if not sizes or any(not MIN_SIZE <= v <= MAX_SIZE for v in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be {MIN_SIZE}..{MAX_SIZE} bytes")
    return sizes


def _whole_seconds(text: str) -> int:
    """iperf3 -t takes whole seconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage errors exit 64 (EX_USAGE), as everywhere in eoe_filter."""
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    default_rows = ",".join([*(name for name in datapaths() if name != "auto"), *BASELINES])
    p = _Parser(
        prog="eoe_filter bench",
        description="Measure how fast each datapath forwards and what it costs, against the C original's design "
                    "and the kernel, in a lab of throw-away network namespaces.",
        epilog="Needs root; builds its own namespaces and removes them (also on Ctrl-C). Progress goes to "
               "standard error, the table (or --json) to standard output.")
    p.add_argument("--datapaths", type=_rows_of, default=_rows_of(default_rows), metavar="LIST",
                   help=f"rows to measure, comma-separated (default {default_rows}; c = the C original's design, "
                        "kernel = tc redirect without userspace, the ceiling; also fast-bypass = fast with "
                        "--qdisc-bypass)")
    p.add_argument("--sizes", type=_sizes_of, default=(64, 1400), metavar="LIST",
                   help=f"inner frame sizes in bytes (default 64,1400; {MIN_SIZE}..{MAX_SIZE})")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="runs per point; medians reported (default 3)")
    p.add_argument("--seconds", type=_positive, metavar="S",
                   help="measured window per point (default 3; warm-up min(1, S/2), latency phase min(2, S))")
    p.add_argument("--quick", action="store_true", help="short mode for CI: --seconds 0.5, --tcp-seconds 1")
    p.add_argument("--latency-rate", type=_positive, default=LATENCY_RATE, metavar="FPS",
                   help=f"the light load of the latency phase (default {LATENCY_RATE})")
    p.add_argument("--tcp-seconds", type=_whole_seconds, metavar="S",
                   help="iperf3 run per path of the TCP section, through two forwarders back to back and over a "
                        "plain veth pair (default 5; 0 skips the section)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--chart", type=Path, metavar="FILE.png",
                   help="also write a bar chart of frames/s (needs matplotlib: pip install 'eoe_filter[chart]')")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick and args.seconds is not None:
        parser.error("--quick and --seconds exclude each other")
    if args.chart is not None:
        try:
            import matplotlib  # noqa: F401 - only checked here, before minutes of measuring
        except ImportError:
            print("eoe_filter bench: --chart needs matplotlib, which is not installed: "
                  "pip install 'eoe_filter[chart]' (or pip install matplotlib)", file=sys.stderr)
            return EX_USAGE
    if os.geteuid() != 0:
        print("eoe_filter bench: needs root (network namespaces, TAP devices, raw sockets)", file=sys.stderr)
        return EX_NOPERM
    seconds = 0.5 if args.quick else args.seconds or 3.0
    tcp_seconds = args.tcp_seconds if args.tcp_seconds is not None else 1 if args.quick else 5
    settings = Settings(rows=args.datapaths, sizes=args.sizes, repeat=args.repeat, seconds=seconds,
                        warmup=min(1.0, seconds / 2), latency_seconds=min(2.0, seconds),
                        latency_rate=args.latency_rate, cpus=default_cpus(), tcp_seconds=tcp_seconds,
                        all_cpus=tuple(sorted(os.sched_getaffinity(0))))
    try:
        doc = run(settings)
    except KeyboardInterrupt:
        print("eoe_filter bench: interrupted; its namespaces and processes have been removed", file=sys.stderr)
        return 130
    print(json.dumps(doc, indent=2) if args.json else render(doc), flush=True)
    if args.chart is not None:
        chart(doc, args.chart)
        print(f"eoe_filter bench: chart written to {args.chart}", file=sys.stderr)
    invalid = [f"{r['datapath']} {r['direction']} {r['inner_size']} B" for r in doc["rows"]
               if any(f.startswith(INVALID) for f in r["flags"])]
    if invalid:
        print(f"eoe_filter bench: figures not valid (see their notes): {', '.join(invalid)}", file=sys.stderr)
        return EX_SOFTWARE
    return 0


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(settings: Settings) -> dict[str, Any]:
    """Measure every row, direction, size and repeat; rows interleaved within each repeat."""
    started = time.monotonic()
    os.sched_setaffinity(0, {settings.cpus[0]})  # keep the orchestrator off the forwarder's core
    notes = []
    if len(set(settings.cpus)) == 1:
        notes.append("only one CPU is usable: generator, forwarder and sink share it; rates are not comparable "
                     "with a multi-core run")
    with tempfile.TemporaryDirectory(prefix="eoebench-") as tmp, Lab(LAB_PREFIX) as lab, ExitStack() as stack:
        _progress(f"lab {lab.tag}: peer0 (ns peer) <-> net0 (ns dut, forwarder, TAP {TAP_IF}); svc0 <-> svc1 "
                  f"(ns dut, kernel row); CPUs generator+sink {settings.cpus[0]}, forwarder {settings.cpus[1]}")
        bench = Bench(settings, lab, stack, Path(tmp))
        notes += bench.notes
        tcp: TcpTest | None = None
        tcp_doc: dict[str, Any] | None = None
        if settings.tcp_seconds and shutil.which("iperf3") is None:
            tcp_doc = {"seconds": settings.tcp_seconds, "skipped": "iperf3 is not installed (Debian: apt install "
                       "iperf3)", "rows": [], "failures": []}
        elif settings.tcp_seconds:
            tcp = TcpTest(lab, Path(tmp), bench.binary, settings)
        rows = {(name, d, size): Row(name, d, size) for d in DIRECTIONS for size in settings.sizes
                for name in settings.rows}
        total = len(rows) * settings.repeat
        step = 0
        failed: dict[str, str] = {}
        """Rows that could not start, and why: not tried again."""
        for k in range(1, settings.repeat + 1):
            for (name, direction, size), row in rows.items():
                step += 1
                where = f"[{step:>3}/{total}] {name:<7} {LABELS[direction]:<12} {size:>5} B  run {k}/{settings.repeat}"
                if name in failed:
                    continue
                try:
                    got = bench.point(name, direction, size)
                except Skip as e:
                    _progress(f"{where}: skipped: {e}")
                    failed[name] = str(e)
                    continue
                row.runs.append(got)
                _progress(f"{where}: {_si(got.delivered)} frames/s delivered, offered {_si(got.offered)}"
                          + ("" if got.cpu_ns_per_frame is None else
                             f", cpu {got.cpu_ns_per_frame:,.0f} ns/frame ({got.cpu_share:.0%} of its core, "
                             f"other load {got.other_share:.0%})")
                          + f", core busy {got.core_share:.0%}"
                          + ("" if got.latency_p50_ns is None or got.latency_p99_ns is None else
                             f", latency p50 {got.latency_p50_ns / 1e3:.0f} µs p99 {got.latency_p99_ns / 1e3:.0f} µs")
                          + ("" if got.counts_match else
                             f", COUNT MISMATCH forwarder {got.forwarder_frames}, sink {got.sink_frames} + "
                             f"{got.sink_drops} + backlog drops {got.path_drops}")
                          + (f", {got.sink_late} frames OUT OF ORDER" if got.sink_late else ""))
            if tcp is not None:
                tcp.round(k, settings.repeat, failed)
        if tcp is not None:
            tcp_doc = tcp.report()
    for row in rows.values():
        if row.datapath in failed and not row.runs:
            row.skipped = failed[row.datapath]
    notes += [f"{name} stopped after {min(len(r.runs) for r in rows.values() if r.datapath == name)} run(s): "
              f"{reason}" for name, reason in failed.items() if any(r.runs for r in rows.values() if r.datapath == name)]
    return report(settings, list(rows.values()), tcp_doc, lab.tag, notes, time.monotonic() - started)
