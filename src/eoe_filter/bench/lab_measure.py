"""The lab's shared pieces for `eoe_filter bench` and the other measurements: interface names, the test
frames, the CPU layout, the C original's start and stop; and the traffic generator's own ceiling.

The frames are built here, independently of the codecs under test, so a
codec bug cannot cancel itself out. Run as a script
(`python -m eoe_filter.bench.lab_measure`, as root) to print how many
frames/s one generator process can offer on this machine: the bench's
"generator-limited" rows are limited by this.
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import statistics
import struct
import subprocess
from dataclasses import dataclass
from typing import Any

from ..lab import Lab
from .traffic import FIELD_SIZE, Generator, InNetns

LAB_PREFIX = "efbench"
NET_IF, PEER_IF, TAP_IF = "net0", "peer0", "tapc"
EOE_HDR = 22
INNER_SEQ = 14  # sequence number right after the inner Ethernet header
INNER_TS = INNER_SEQ + FIELD_SIZE
INNER_ETHERTYPE = 0x88B5  # IEEE local experimental: nothing in the stack handles it


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


def main() -> None:
    """Print the generator ceiling (the C original's rates: `eoe_filter bench --datapaths c`)."""
    for size in (64, 1400):
        fig = generator_ceiling(size)
        print(f"generator {size:4d} B: median {fig.median:12,.0f} frames/s  runs {[round(r) for r in fig.runs]}")


if __name__ == "__main__":
    main()
