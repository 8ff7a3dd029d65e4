#!/usr/bin/env python3
"""Soak: two forwarders back to back, steady traffic both ways through their TAPs, every lost frame accounted for.

    python scripts/soak.py --rate 20000 --seconds 60 [--datapath NAME] [--json]

The demo's topology: a board forwarder (-E -F) and a switch forwarder (the
mirror image: op_code 1, downstream, MACs swapped) joined by a veth pair. A
generator (bench/traffic.py) writes sequence-numbered inner frames into each
TAP through a packet socket, and so through the TAP's qdisc and tx queue like
any host traffic; a sink counts them on the far TAP. Loss is exact (offered
minus delivered), and each lost frame is put where it was dropped by the
counter that saw it: the TAP's tx queue (the interface's tx_dropped), either
forwarder's drop counters (those of `eoe_filter stats TAP --json`, which
include the socket's queue overflow) and the sink's own socket. The veth and
TAP receive drop counters are shown beside them: they count the same events
as the forwarders' send errors, so they only explain what nothing else does.

The verdict judges the forwarders' path, not the measuring tools: frames the
sink itself dropped are not loss, frames the kernel refused to the generator
were never offered. A machine too busy to run the forwarders is not their
fault either: the counters and every forwarder thread's run-queue wait
(schedstat) are sampled each second, and a drop in a second when a forwarder
thread waited for a CPU, within that second and its neighbours, as long as
the TAP's queue lasts is "starved": that much waiting can fill the queue
whatever the forwarder does.

Exit status: 0 within limits; 1 when loss beyond the starved seconds or RSS
growth passes its limit, a forwarder died or the accounting does not close;
2 when the run could not be set up; 3 when the loss passes the limit only
with the starved seconds' drops (the machine was too busy to judge).
Progress goes to stderr every 10 s, the report to stdout. Needs root;
everything lives in throw-away namespaces. tests/system/test_overload.py
uses the counting helpers too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TextIO, cast

from eoe_filter import control
from eoe_filter.bench.lab_measure import INNER_SEQ, inner_frame
from eoe_filter.bench.traffic import Generator, GenReport, InNetns, Sink, SinkReport
from eoe_filter.lab import Lab, in_netns

TAP = "tap-fwd"
NET = "eth0"
MIRROR = ["--op-code", "1", "--downstream", "1", "--dmac", "06:00:00:00:00:78", "--smac", "06:00:00:00:00:f8"]
READY = ("service to net thread is waiting for data", "kernel datapath attached")
"""The last start-up line of a userspace datapath, of the eBPF one."""
PROGRESS_EVERY = 10
WARMUP = 5.0
"""RSS growth is measured from this far into the traffic: buffers and the allocator have settled by then."""
SETTLE_QUIET = 1.2
"""Counters unchanged this long mean every queue has drained: the forwarder collects socket drops and the
eBPF datapath copies its counters every 0.5 s."""
EX_OK, EX_FAIL, EX_SETUP, EX_BUSY = 0, 1, 2, 3


# --- processes ---------------------------------------------------------------------------------------

class ProcessTree:
    """A forwarder and whatever worker processes it forked: its memory, CPU and waits are theirs together."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int(_stat_fields(entry)[1])
                except (OSError, IndexError):
                    continue  # gone meanwhile
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
            tree += frontier
        return tree

    def rss_kib(self) -> dict[int, int]:
        """VmRSS of each live process of the tree (pages shared after a fork count in each)."""
        found = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            found[pid] = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return found

    def cpu_seconds(self) -> float:
        """User + system time of the live processes of the tree, all threads."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = _stat_fields(Path(f"/proc/{pid}"))
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def run_queue_waits(self) -> dict[int, int]:
        """Nanoseconds each live thread of the tree has spent runnable but waiting for a CPU (schedstat)."""
        waits = {}
        for pid in self.pids():
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    waits[int(task.name)] = int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError):
                continue  # gone meanwhile
        return waits


def _stat_fields(proc: Path) -> list[str]:
    """/proc/PID/stat after the command name: [1] ppid, [11] utime, [12] stime."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


class Forwarder:
    """A forwarder this run started; its output is read continuously (a full pipe would stall it), last lines kept."""

    def __init__(self, lab: Lab, node: str, ns: str, args: list[str]) -> None:
        self.node, self.ns = node, ns
        self.proc = lab.start(ns, [sys.executable, "-m", "eoe_filter", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.tree = ProcessTree(self.proc.pid)
        self.tail: deque[str] = deque(maxlen=40)
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in cast(TextIO, self.proc.stdout):  # text=True
            self.tail.append(line.rstrip("\n"))
            if any(text in line for text in READY):
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.node} forwarder did not start:\n" + "\n".join(self.tail))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        return sum(self.tree.rss_kib().values())

    def death(self) -> str:
        return f"{self.node} forwarder exited {self.proc.returncode}:\n" + "\n".join(self.tail)


# --- counters ----------------------------------------------------------------------------------------

def forwarder_counters(ns: str, service: str) -> dict[str, dict]:
    """The forwarder's counters per direction, as `eoe_filter stats SERVICE --json` prints them: the same query
    of its control endpoint, made here because it is read every second."""
    with in_netns(ns):
        snap = control.query(service, timeout=5.0)
    if snap is None:
        raise RuntimeError(f"no forwarder answers for {service} in {ns}")
    return snap["counters"]  # type: ignore[return-value]


def link_counters(ns: str) -> dict[str, dict]:
    """`ip -s -j link` of namespace ns: {ifname: {"rx": {...}, "tx": {...}}}, the kernel's own counts,
    and "txqlen"."""
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=30,
                         check=True)
    return {link["ifname"]: link["stats64"] | {"txqlen": link.get("txqlen", 0)} for link in json.loads(out.stdout)}


@dataclass(frozen=True)
class Snapshot:
    links: dict[tuple[str, str], dict]
    """(namespace, interface) -> its rx and tx counters."""
    forwarders: dict[tuple[str, str], dict[str, dict]]
    """(namespace, service interface) -> the forwarder's counters."""


def snapshot(namespaces: Iterable[str], forwarders: Iterable[tuple[str, str]]) -> Snapshot:
    links = {(ns, name): stats for ns in namespaces for name, stats in link_counters(ns).items()}
    return Snapshot(links, {key: forwarder_counters(*key) for key in forwarders})


def settle(namespaces: Iterable[str], forwarders: Iterable[tuple[str, str]], timeout: float = 15.0) -> Snapshot:
    """The snapshot once nothing moves any more: the traffic has stopped and every queue has drained."""
    namespaces, forwarders = list(namespaces), list(forwarders)
    last = snapshot(namespaces, forwarders)
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = snapshot(namespaces, forwarders)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_QUIET:
            break
    return last


# --- where the frames of one direction went ---------------------------------------------------------

@dataclass(frozen=True)
class Hop:
    """A place on a direction's path where a frame can be dropped, and the counter that counts it there.

    kind: "tap_queue" (a TAP's tx queue: tx_dropped), "net_to_service" or "service_to_net" (a forwarder's
    drop counters, `name` its service interface), "rx" or "tx" (an interface's dropped counter: shown, and
    used only to explain frames nothing else counted, as it often counts the same event as a forwarder).
    """

    label: str
    ns: str
    name: str
    kind: str


@dataclass
class Ledger:
    """One direction: offered = delivered + every drop, each by the counter that saw it."""

    name: str
    offered: int = 0
    delivered: int = 0
    seconds: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)
    """Attributed drops by place, the sink's socket included."""
    sink_drops: int = 0
    kernel: dict[str, int] = field(default_factory=dict)
    """Interface drop counters on the path, not summed into the drops."""
    forwarded: dict[str, int] = field(default_factory=dict)
    """Frames each forwarder passed on in this direction."""
    uncounted: list[str] = field(default_factory=list)
    """Places that drop without counting (a forwarder's kernel filter): a loss there stays unattributed."""
    late: int = 0
    starved_drops: int = 0
    """Path drops in seconds when the machine starved a forwarder of CPU (see `starved`)."""

    @property
    def lost(self) -> int:
        return self.offered - self.delivered

    @property
    def unattributed(self) -> int:
        return self.lost - sum(self.drops.values())

    @property
    def path_loss(self) -> int:
        """Frames the forwarders' path lost: every loss but the sink's own socket drops."""
        return self.lost - self.sink_drops

    @property
    def closes(self) -> bool:
        """Every lost frame has a counter: exactly, or the rest within the interfaces' drop counters."""
        return self.unattributed == 0 or 0 < self.unattributed <= sum(self.kernel.values())

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"lost": self.lost, "unattributed": self.unattributed, "path_loss": self.path_loss,
                               "closes": self.closes,
                               "offered_rate": self.offered / self.seconds if self.seconds else 0.0}

    def render(self) -> str:
        rate = self.offered / self.seconds if self.seconds else 0.0
        lines = [(f"{self.name}: offered {self.offered:,} ({rate:,.0f}/s), delivered {self.delivered:,}, "
                  f"lost {self.lost:,} ({percent(self.lost, self.offered)}), "
                  f"path loss {self.path_loss:,} ({percent(self.path_loss, self.offered)})")]
        lines += [f"    forwarded by {where}: {n:,}" for where, n in self.forwarded.items()]
        lines += [f"    dropped at {where}: {n:,}" for where, n in self.drops.items() if n]
        lines += [f"    kernel counter {where}: {n:,}" for where, n in self.kernel.items() if n]
        lines += [f"    not counted: {where}" for where in self.uncounted]
        lines.append(f"    unattributed: {self.unattributed:,}" + ("" if self.closes else "  <-- NOT ACCOUNTED FOR"))
        if self.late:
            lines.append(f"    late (reordered or duplicated): {self.late:,}")
        if self.starved_drops:
            lines.append(f"    of the path loss, dropped while a forwarder was starved of CPU: {self.starved_drops:,}")
        return "\n".join(lines)


def percent(n: float, of: float) -> str:
    return f"{100 * n / of:.4f} %" if of else "n/a"


def count_hops(name: str, hops: Iterable[Hop], before: Snapshot, after: Snapshot) -> Ledger:
    """The counters' changes between two snapshots along a path: drops, interface drops, frames forwarded."""
    book = Ledger(name)
    for hop in hops:
        key = (hop.ns, hop.name)
        if hop.kind in ("net_to_service", "service_to_net"):
            old, new = before.forwarders[key][hop.kind], after.forwarders[key][hop.kind]
            for reason, n in new["drops"].items():
                place = f"{hop.label}: {reason.replace('_', ' ')}"
                if n is None:
                    book.uncounted.append(place)
                else:
                    book.drops[place] = n - (old["drops"][reason] or 0)
            book.forwarded[hop.label] = new["frames"] - old["frames"]
        else:
            side = "tx" if hop.kind == "tap_queue" else hop.kind
            dropped = after.links[key][side]["dropped"] - before.links[key][side]["dropped"]
            (book.drops if hop.kind == "tap_queue" else book.kernel)[hop.label] = dropped
    return book


def ledger(name: str, hops: Iterable[Hop], before: Snapshot, after: Snapshot, sent: Sequence[GenReport],
           received: Sequence[SinkReport], sink_label: str) -> Ledger:
    """Put each frame the generators sent between two snapshots where it ended, from the counters' changes."""
    book = count_hops(name, hops, before, after)
    book.seconds = sum(s.seconds for s in sent)
    book.offered, book.delivered = sum(s.frames for s in sent), sum(r.frames for r in received)
    book.drops[sink_label] = book.sink_drops = sum(r.socket_drops for r in received)
    book.late = sum(r.late for r in received)
    return book


# --- the soak ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str
    ns: str


def hops(src: Node, dst: Node) -> list[Hop]:
    """A frame from src's TAP to dst's: src's TAP tx queue and forwarder, the veth, dst's forwarder and TAP."""
    return [Hop(f"{src.name} TAP tx queue", src.ns, TAP, "tap_queue"),
            Hop(f"{src.name} forwarder", src.ns, TAP, "service_to_net"),
            Hop(f"{src.name} {NET} tx_dropped", src.ns, NET, "tx"),
            Hop(f"{dst.name} {NET} rx_dropped", dst.ns, NET, "rx"),
            Hop(f"{dst.name} forwarder", dst.ns, TAP, "net_to_service"),
            Hop(f"{dst.name} TAP rx_dropped", dst.ns, TAP, "rx")]


@dataclass
class Timeline:
    """A sample a second while the traffic runs: the counters, and every forwarder thread's run-queue wait."""

    t: list[float] = field(default_factory=list)
    """time.monotonic() of each sample."""
    snaps: list[Snapshot] = field(default_factory=list)
    waits: list[dict[tuple[str, int], int]] = field(default_factory=list)
    """(forwarder, thread id) -> nanoseconds it has waited for a CPU so far."""

    def add(self, snap: Snapshot, fwds: dict[str, Forwarder]) -> None:
        self.t.append(time.monotonic())
        self.snaps.append(snap)
        self.waits.append({(name, tid): n for name, f in fwds.items() for tid, n in f.tree.run_queue_waits().items()})

    def path_drops(self, i: int, flow: tuple[Node, Node]) -> int:
        """Drops on one direction's path, the sinks' excluded, from the first sample to sample i."""
        return sum(count_hops("", hops(*flow), self.snaps[0], self.snaps[i]).drops.values())

    def waited(self, forwarder: str) -> float:
        """Seconds the forwarder's threads waited for a CPU over the timeline, together."""
        first, last = self.waits[0], self.waits[-1]
        return sum(n - first.get(key, 0) for key, n in last.items() if key[0] == forwarder) / 1e9

    def starved(self, stall: float) -> list[bool]:
        """For each interval between samples: did a forwarder thread wait at least `stall` seconds for a CPU
        within it and its neighbours? A queue that overflows fills within about that window."""
        per_interval = [{key: n - a.get(key, 0) for key, n in b.items()} for a, b in pairwise(self.waits)]
        flags = []
        for i in range(len(per_interval)):
            window = per_interval[max(0, i - 1):i + 2]
            flags.append(any(sum(w.get(key, 0) for w in window) >= stall * 1e9 for key in set().union(*window)))
        return flags

    def longest_wait(self) -> float:
        """The most seconds one thread waited for a CPU between two samples."""
        return max((n - a.get(key, 0) for a, b in pairwise(self.waits) for key, n in b.items()), default=0) / 1e9

    def longest_gap(self) -> float:
        """The most seconds between two samples, nominally one: more is this script kept off the CPUs too."""
        return max((b - a for a, b in pairwise(self.t)), default=0.0)


@dataclass
class Result:
    args: argparse.Namespace
    books: list[Ledger]
    forwarders: dict[str, dict[str, float]]
    """Per forwarder: pid, RSS (KiB) at start, after the warm-up and at the end, its growth, CPU seconds."""
    starvation: dict[str, float]
    """The wait that fills a TAP queue, intervals sampled and starved, the longest wait of a thread in one,
    the longest interval."""
    failures: list[str]
    busy: list[str]
    """Limits passed only because of the starved seconds: the machine was too busy to judge."""

    @property
    def exit_code(self) -> int:
        return EX_FAIL if self.failures else EX_BUSY if self.busy else EX_OK

    def as_dict(self) -> dict[str, object]:
        a = self.args
        return {"datapath": a.datapath or "default", "rate": a.rate, "seconds": a.seconds,
                "frame_size": a.frame_size, "directions": {b.name: b.as_dict() for b in self.books},
                "forwarders": self.forwarders, "starvation": self.starvation, "failures": self.failures,
                "too_busy": self.busy, "exit": self.exit_code}

    def render(self) -> str:
        a, s = self.args, self.starvation
        lines = [(f"soak: {a.seconds:g} s at {a.rate:,.0f} frames/s each way, {a.frame_size}-byte inner frames, "
                  f"datapath {a.datapath or 'default'}")]
        lines += [b.render() for b in self.books]
        for name, f in self.forwarders.items():
            lines.append(f"{name} forwarder (pid {f['pid']}): RSS {f['rss_kib_start']:,} KiB at start, "
                         f"{f['rss_kib_warm']:,} KiB after the warm-up, {f['rss_kib_end']:,} KiB at the end "
                         f"(growth {f['rss_growth_kib']:+,} KiB); CPU {f['cpu_seconds']:.1f} s, "
                         f"waited {f['run_queue_wait_seconds']:.1f} s for a CPU")
        if s:
            lines.append(f"starved seconds (a forwarder thread waited {s['stall_ms']:.0f} ms or more for a CPU, as "
                         f"long as a TAP queue lasts): {s['seconds']:.0f} of {s['sampled']:.0f}; the longest wait "
                         f"of a thread between two samples {s['longest_wait_ms']:,.0f} ms, the longest time between "
                         f"two samples (1 s apart unless the machine stalled) {s['longest_gap_s']:.1f} s")
        lines += [f"FAIL: {why}" for why in self.failures]
        lines += [f"TOO BUSY TO JUDGE: {why}" for why in self.busy]
        if self.exit_code == EX_OK:
            lines.append("PASS")
        return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=20000, help="frames/s each way (default 20000)")
    p.add_argument("--seconds", type=float, default=60, help="traffic duration (default 60)")
    p.add_argument("--datapath", help="the forwarders' --datapath (default: theirs)")
    p.add_argument("--frame-size", type=int, default=64, help="inner frame bytes (default 64)")
    p.add_argument("--max-loss", type=float, default=0.1, help="percent of offered frames (default 0.1)")
    p.add_argument("--max-rss-growth-kib", type=int, default=1024, help="per forwarder (default 1024)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, TAP devices, raw sockets)", file=sys.stderr)
        return EX_SETUP
    try:
        with Lab("efsoak") as lab:
            result = soak(lab, args)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return EX_SETUP
    except KeyboardInterrupt:
        print("soak: interrupted; everything it made has been removed", file=sys.stderr)
        return 130
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.render(), flush=True)
    return result.exit_code


def soak(lab: Lab, args: argparse.Namespace) -> Result:
    board, switch = Node("board", lab.netns("board")), Node("switch", lab.netns("switch"))
    lab.veth(board.ns, NET, switch.ns, NET)
    base = ["-n", NET, "-t", TAP, "-E", *(["--datapath", args.datapath] if args.datapath else [])]
    fwds = {"switch": Forwarder(lab, "switch", switch.ns, [*base, *MIRROR]),
            "board": Forwarder(lab, "board", board.ns, [*base, "-F"])}
    for fwd in fwds.values():
        fwd.wait_ready()
    namespaces, services = (board.ns, switch.ns), [(board.ns, TAP), (switch.ns, TAP)]
    flows = [(board, switch), (switch, board)]
    # Host-like traffic into each TAP: through its qdisc, so that a full tx queue drops and counts instead of
    # pushing back, in bursts of about 2 ms, so that no burst is bigger than the steady state needs.
    batch = int(min(256, max(16, args.rate / 500)))
    with ExitStack() as stack:
        sinks = [stack.enter_context(InNetns(dst.ns, functools.partial(Sink, TAP, seq_offset=INNER_SEQ)))
                 for _, dst in flows]
        gens = [stack.enter_context(InNetns(src.ns, functools.partial(
                    Generator, TAP, inner_frame(args.frame_size), seq_offset=INNER_SEQ, qdisc_bypass=False,
                    batch=batch))) for src, _ in flows]
        timeline = Timeline()
        timeline.add(snapshot(namespaces, services), fwds)
        rss0 = {name: f.rss_kib() for name, f in fwds.items()}
        cpu0 = {name: f.tree.cpu_seconds() for name, f in fwds.items()}
        for sink in sinks:
            sink.start()
        for gen in gens:
            gen.start(duration=args.seconds, rate=args.rate)
        warm, died = watch(fwds, flows, args.seconds, timeline, namespaces, services)
        if died:
            return Result(args, [], {}, {}, died, [])
        sent = [gen.result(60) for gen in gens]
        after = settle(namespaces, services)
        for sink in sinks:
            sink.stop()
        received = [sink.result(60) for sink in sinks]
    # Waiting this long lets the generator fill a TAP's tx queue from empty (less the burst it sends at once).
    queue_len = min(after.links[(node.ns, TAP)]["txqlen"] for node in (board, switch))
    stall = (queue_len - batch) / args.rate
    flags = timeline.starved(stall)
    books = []
    for flow, sent_, received_ in zip(flows, sent, received):
        src, dst = flow
        book = ledger(f"{src.name} -> {dst.name}", hops(src, dst), timeline.snaps[0], after, [sent_], [received_],
                      f"{dst.name} sink socket")
        drops = [timeline.path_drops(i, flow) for i in range(len(timeline.t))]
        book.starved_drops = sum(b - a for (a, b), flag in zip(pairwise(drops), flags) if flag)
        books.append(book)
    forwarders: dict[str, dict[str, float]] = {}
    for name, fwd in fwds.items():
        rss, base_rss = fwd.rss_kib(), warm.get(name, rss0[name])
        forwarders[name] = {"pid": fwd.proc.pid, "rss_kib_start": rss0[name], "rss_kib_warm": base_rss,
                            "rss_kib_end": rss, "rss_growth_kib": rss - base_rss,
                            "cpu_seconds": round(fwd.tree.cpu_seconds() - cpu0[name], 2),
                            "run_queue_wait_seconds": round(timeline.waited(name), 2)}
    starvation = {"stall_ms": stall * 1e3, "sampled": len(flags), "seconds": sum(flags),
                  "longest_wait_ms": timeline.longest_wait() * 1e3, "longest_gap_s": timeline.longest_gap()}
    failures, busy = verdict(books, forwarders, [f.death() for f in fwds.values() if not f.alive()], args)
    return Result(args, books, forwarders, starvation, failures, busy)


def watch(fwds: dict[str, Forwarder], flows: list[tuple[Node, Node]], seconds: float, timeline: Timeline,
          namespaces: tuple[str, ...], services: list[tuple[str, str]]) -> tuple[dict[str, int], list[str]]:
    """While the traffic runs: a sample a second, the RSS baseline after the warm-up, a progress line every
    10 s, deaths noticed. Returns the warm RSS per forwarder and what the dead ones said last."""
    t0 = time.monotonic()
    warm: dict[str, int] = {}
    died: list[str] = []
    while (now := time.monotonic()) < t0 + seconds:
        time.sleep(min(1.0, t0 + seconds - now))
        died = [fwd.death() for fwd in fwds.values() if not fwd.alive()]
        if died:
            break
        timeline.add(snapshot(namespaces, services), fwds)
        if not warm and timeline.t[-1] - t0 >= min(WARMUP, seconds / 2):
            warm = {name: f.rss_kib() for name, f in fwds.items()}
        if len(timeline.t) > PROGRESS_EVERY and (len(timeline.t) - 1) % PROGRESS_EVERY == 0:
            print(progress(timeline, fwds, flows), file=sys.stderr, flush=True)
    return warm, died


def progress(timeline: Timeline, fwds: dict[str, Forwarder], flows: list[tuple[Node, Node]]) -> str:
    """One line: each way's rate over the last 10 s (frames the far forwarder passed to its TAP), drops so far,
    RSS and CPU."""
    now, then = timeline.snaps[-1], timeline.snaps[-1 - PROGRESS_EVERY]
    dt = timeline.t[-1] - timeline.t[-1 - PROGRESS_EVERY]
    parts = [f"[{timeline.t[-1] - timeline.t[0]:4.0f} s]"]
    for src, dst in flows:
        key = (dst.ns, TAP)
        carried = now.forwarders[key]["net_to_service"]["frames"] - then.forwarders[key]["net_to_service"]["frames"]
        parts.append(f"{src.name}->{dst.name} {carried / dt:,.0f}/s")
    parts.append(f"drops so far {sum(timeline.path_drops(len(timeline.t) - 1, flow) for flow in flows):,}")
    parts += [f"{name}: RSS {f.rss_kib():,} KiB, CPU {f.tree.cpu_seconds():.1f} s" for name, f in fwds.items()]
    return "  ".join(parts)


def verdict(books: list[Ledger], forwarders: dict[str, dict[str, float]], died: list[str],
            args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(failures, limits passed only with the starved seconds' drops counted)."""
    failures, busy = list(died), []
    for b in books:
        if b.offered == 0:
            failures.append(f"{b.name}: nothing was offered")
        elif 100 * (b.path_loss - b.starved_drops) / b.offered > args.max_loss:
            failures.append(f"{b.name}: lost {percent(b.path_loss, b.offered)} > {args.max_loss} %, "
                            f"{percent(b.path_loss - b.starved_drops, b.offered)} outside the starved seconds")
        elif 100 * b.path_loss / b.offered > args.max_loss:
            busy.append(f"{b.name}: lost {percent(b.path_loss, b.offered)} > {args.max_loss} %, but only "
                        f"{percent(b.path_loss - b.starved_drops, b.offered)} outside the starved seconds")
        if not b.closes:
            failures.append(f"{b.name}: {b.unattributed:,} lost frames are in no counter")
    for name, f in forwarders.items():
        if f["rss_growth_kib"] > args.max_rss_growth_kib:
            failures.append(f"{name} forwarder: RSS grew {f['rss_growth_kib']:,} KiB > {args.max_rss_growth_kib:,} KiB")
    return failures, busy


if __name__ == "__main__":
    sys.exit(main())
